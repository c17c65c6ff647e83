"""Two chatting browsers for the group-listener test: the official Python client SDK.

  group_chat.py CONNECTION_STRING HUB GROUP COUNT [PAUSE_S]

Connects alice and bob (tokens from the official service SDK, allowed to send to GROUP), and has
them take turns sending COUNT messages each to GROUP with `send_to_group` (json {"from", "n"},
PAUSE_S apart, default 0.005), then disconnects both. Prints "sent N". Exits 1 on any failure.
"""
import sys
import time

from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import WebPubSubDataType
from azure.messaging.webpubsubservice import WebPubSubServiceClient

cs, hub, group, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.005
service = WebPubSubServiceClient.from_connection_string(cs, hub=hub, retry_total=0)


def client(user):
    token = lambda: service.get_client_access_token(user_id=user, roles=[f"webpubsub.sendToGroup.{group}"])["url"]
    return WebPubSubClient(WebPubSubClientCredential(token), message_retry_total=3, message_retry_backoff_factor=0.2)


alice, bob = client("alice"), client("bob")
alice.open()
bob.open()
for i in range(count):
    for name, c in (("alice", alice), ("bob", bob)):
        # Acknowledged by the hub before the next one: each sender's order is the order sent.
        c.send_to_group(group, {"from": name, "n": i}, WebPubSubDataType.JSON)
    time.sleep(pause)
print("sent", 2 * count, flush=True)
alice.close()
bob.close()
