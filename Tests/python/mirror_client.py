"""A browser-like client for the mirroring tests: the official Python client SDK.

  mirror_client.py CONNECTION_STRING HUB USER COUNT [EXTRA_QUERY]

Connects as USER (a token from the official service SDK; EXTRA_QUERY is appended to the client
URL, e.g. "&room=42"), sends COUNT `chat` events {"n": i} and one text event `note`, prints
"sent" and the server messages it got back, then disconnects. Exits 1 on any failure.
"""
import json
import sys
import threading

from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import CallbackType, WebPubSubDataType
from azure.messaging.webpubsubservice import WebPubSubServiceClient

cs, hub, user, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
extra = sys.argv[5] if len(sys.argv) > 5 else ""
service = WebPubSubServiceClient.from_connection_string(cs, hub=hub, retry_total=0)
url = lambda: service.get_client_access_token(user_id=user)["url"] + extra
client = WebPubSubClient(WebPubSubClientCredential(url), message_retry_total=3, message_retry_backoff_factor=0.2)
replies = []
done = threading.Event()
client.subscribe(CallbackType.SERVER_MESSAGE, lambda e: replies.append(e.data))
client.open()
for i in range(count):
    client.send_event("chat", {"n": i}, WebPubSubDataType.JSON)
client.send_event("note", "hello text", WebPubSubDataType.TEXT)
print("sent", flush=True)
client.close()
print(json.dumps({"replies": [r if isinstance(r, (str, dict, list)) else str(r) for r in replies]}), flush=True)
