"""An independent Kafka client (confluent-kafka) for the tests: it writes the input the bridge
reads and reads back what the bridge wrote.

  kafka_tool.py produce BROKERS TOPIC        < records.ndjson
      each line {"value": "..." or "value_hex": "ff00", "key": "..."?, "partition": N?, "headers": {...}?}
  kafka_tool.py consume BROKERS TOPIC COUNT [TIMEOUT_S] [LINGER_S]
      prints one JSON line per record: topic, partition, offset, key, value, headers;
      exits 1 if fewer than COUNT records arrived in time. With LINGER_S, goes on reading that
      long after COUNT and prints what else arrives (to see records that should not be there).
  kafka_tool.py create BROKERS TOPIC PARTITIONS
  kafka_tool.py committed BROKERS GROUP TOPIC PARTITIONS
      prints {"PARTITION": OFFSET, ...}: the group's committed offsets (-1 where none)
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def produce(brokers, topic):
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        value = bytes.fromhex(r["value_hex"]) if "value_hex" in r else r["value"].encode()
        kwargs = {"value": value, "on_delivery": report}
        if r.get("key") is not None:
            kwargs["key"] = r["key"].encode()
        if r.get("partition") is not None:
            kwargs["partition"] = r["partition"]
        if r.get("headers"):
            kwargs["headers"] = [(k, v.encode()) for k, v in r["headers"].items()]
        producer.produce(topic, **kwargs)
        producer.poll(0)
    left = producer.flush(30)
    if failures or left:
        print(f"produce failed: {failures[:3]} ({left} not flushed)", file=sys.stderr)
        sys.exit(1)


def consume(brokers, topic, count, timeout, linger=0.0):
    # Reads every partition from the start without a group, so that nothing depends on rebalances.
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "kafka-tool-" + uuid.uuid4().hex,
                         "enable.auto.commit": False,
                         # The test broker (Tansu) holds a join for about half the session timeout.
                         "session.timeout.ms": 6000})
    deadline = time.time() + timeout
    partitions = None
    while partitions is None and time.time() < deadline:
        meta = consumer.list_topics(topic, timeout=5)
        t = meta.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            partitions = sorted(t.partitions)
        else:
            time.sleep(0.2)
    if partitions is None:
        print(f"topic {topic} does not exist", file=sys.stderr)
        sys.exit(1)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got = 0
    linger_until = None
    while True:
        if linger_until is None and got >= count:
            if linger <= 0:
                break
            linger_until = time.time() + linger
        if time.time() >= (deadline if linger_until is None else linger_until):
            break
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            continue
        headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
        print(json.dumps({"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                          "key": msg.key().decode() if msg.key() is not None else None,
                          "value": msg.value().decode(errors="replace") if msg.value() is not None else None,
                          "headers": headers}), flush=True)
        got += 1
    consumer.close()
    if got < count:
        print(f"only {got} of {count} records arrived", file=sys.stderr)
        sys.exit(1)


def create(brokers, topic, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(30)
        except KafkaException as e:
            if "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def committed(brokers, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        print(json.dumps({str(tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in offsets}))
    finally:
        consumer.close()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "produce":
        produce(sys.argv[2], sys.argv[3])
    elif cmd == "consume":
        consume(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 30,
                float(sys.argv[6]) if len(sys.argv) > 6 else 0.0)
    elif cmd == "create":
        create(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif cmd == "committed":
        committed(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit(f"unknown command {cmd}")
