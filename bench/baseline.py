"""The obvious Python bridge, written plainly as the SDKs' docs show: a confluent-kafka consumer
loop that calls the official WebPubSubServiceClient.send_to_group for each message.

  baseline.py BROKERS TOPIC GROUP_ID CONNECTION_STRING HUB GROUP COUNT

Ends after COUNT messages (the benchmark's input is finite; a real one would loop forever).
"""
import json
import sys

from azure.messaging.webpubsubservice import WebPubSubServiceClient
from confluent_kafka import Consumer


def main():
    brokers, topic, group_id, connection_string, hub, group, count = sys.argv[1:8]
    count = int(count)
    service = WebPubSubServiceClient.from_connection_string(connection_string, hub=hub)
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        # The bridge's default too: both pay the same consumer-group join on the test broker.
        "session.timeout.ms": 10000,
    })
    consumer.subscribe([topic])
    sent = 0
    try:
        while sent < count:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                print(f"consumer error: {msg.error()}", file=sys.stderr)
                continue
            service.send_to_group(group, json.loads(msg.value()), content_type="application/json")
            sent += 1
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
