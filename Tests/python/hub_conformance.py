"""The embedded hub against the official Azure Web PubSub Python SDKs.

  hub_conformance.py CONNECTION_STRING

Runs every scenario, prints PASS/FAIL lines, exits 1 if any failed. The Swift test
(LocalHubTests) starts the hub and runs this.
"""
import io
import socket
import sys
import threading
import time
import traceback

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import (
    CallbackType,
    SendMessageError,
    WebPubSubDataType,
    WebPubSubProtocolType,
)
from azure.messaging.webpubsubservice import WebPubSubServiceClient

CS = sys.argv[1]
HUB = "conformance"
service = WebPubSubServiceClient.from_connection_string(CS, hub=HUB, retry_total=0)
failures = []


class Client:
    """A WebPubSubClient that records what it receives."""

    def __init__(self, user=None, roles=None, groups=None, protocol=WebPubSubProtocolType.JSON_RELIABLE):
        self.user = user
        url = lambda: service.get_client_access_token(user_id=user, roles=roles or [], groups=groups or [])["url"]
        self.client = WebPubSubClient(
            WebPubSubClientCredential(url), protocol_type=protocol, message_retry_total=1,
            message_retry_backoff_factor=0.01, reconnect_retry_backoff_factor=0.05, reconnect_retry_total=20)
        self.messages = []
        self.connected = []
        self.disconnected = []
        self.cv = threading.Condition()
        self.client.subscribe(CallbackType.GROUP_MESSAGE, lambda e: self._record(("group", e.group, e.data_type, e.data, e.from_user_id, e.sequence_id)))
        self.client.subscribe(CallbackType.SERVER_MESSAGE, lambda e: self._record(("server", None, e.data_type, e.data, None, e.sequence_id)))
        self.client.subscribe(CallbackType.CONNECTED, lambda e: self._event(self.connected, e.connection_id))
        self.client.subscribe(CallbackType.DISCONNECTED, lambda e: self._event(self.disconnected, e.message))
        self.client.open()
        self.wait(lambda: self.connected, "connected")
        self.connection_id = self.connected[0]

    def _record(self, m):
        with self.cv:
            data = m[3]
            if isinstance(data, memoryview):
                data = bytes(data)
            self.messages.append((m[0], m[1], str(m[2].value if hasattr(m[2], "value") else m[2]), data, m[4], m[5]))
            self.cv.notify_all()

    def _event(self, lst, value):
        with self.cv:
            lst.append(value)
            self.cv.notify_all()

    def wait(self, predicate, what, timeout=10):
        with self.cv:
            if not self.cv.wait_for(predicate, timeout=timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def wait_messages(self, n, timeout=10):
        self.wait(lambda: len(self.messages) >= n, f"{n} messages (have {self.messages})", timeout)
        return self.messages[:n]

    def take(self):
        with self.cv:
            got, self.messages = self.messages, []
            return got

    def close(self):
        self.client.close()


def scenario(fn):
    name = fn.__name__
    try:
        fn()
        print(f"PASS {name}", flush=True)
    except Exception as e:  # report and go on: every scenario runs
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc(file=sys.stdout)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def settle():
    time.sleep(0.3)


@scenario
def rest_sends_reach_clients():
    a = Client(user="alice", groups=["news"])
    b = Client(user="bob", protocol=WebPubSubProtocolType.JSON)
    try:
        service.send_to_all({"hello": [1, 2.5, None]})
        expect(a.wait_messages(1)[0][:4] == ("server", None, "json", {"hello": [1, 2.5, None]}), a.messages)
        expect(b.wait_messages(1)[0][:4] == ("server", None, "json", {"hello": [1, 2.5, None]}), b.messages)
        expect(a.messages[0][5] == 1, "reliable messages carry sequence ids from 1")
        expect(b.messages[0][5] is None, "json.webpubsub.azure.v1 messages carry no sequence id")
        a.take(), b.take()
        service.send_to_group("news", "headline", content_type="text/plain")
        expect(a.wait_messages(1)[0][:4] == ("group", "news", "text", "headline"), a.messages)
        service.send_to_user("bob", io.BytesIO(b"\x00\x01\xfe"), content_type="application/octet-stream")
        expect(b.wait_messages(1)[0][:4] == ("server", None, "binary", b"\x00\x01\xfe"), b.messages)
        b.take()
        service.send_to_connection(a.connection_id, "just you", content_type="text/plain")
        expect(a.wait_messages(2)[1][3] == "just you", a.messages)
        a.take()
        service.send_to_all("only bob", content_type="text/plain", filter="userId eq 'bob'")
        service.send_to_all("not alice", content_type="text/plain", excluded=[a.connection_id])
        service.send_to_all("news readers", content_type="text/plain", filter="'news' in groups")
        b.wait_messages(2)
        a.wait_messages(1)
        settle()
        expect([m[3] for m in b.take()] == ["only bob", "not alice"], "filter and excluded for bob")
        expect([m[3] for m in a.take()] == ["news readers"], "filter for alice")
    finally:
        a.close(), b.close()


@scenario
def exists_membership_and_listing():
    a = Client(user="carol")
    b = Client(user="dave")
    try:
        expect(service.connection_exists(a.connection_id), "connection exists")
        expect(not service.connection_exists("nope"), "unknown connection")
        expect(service.user_exists("carol") and not service.user_exists("nobody"), "user exists")
        expect(not service.group_exists("team"), "empty group")
        service.add_connection_to_group("team", a.connection_id)
        service.add_user_to_group("team", "dave")
        expect(service.group_exists("team"), "group exists")
        members = sorted((m.connection_id, m.user_id) for m in service.list_connections(group="team"))
        expect(members == sorted([(a.connection_id, "carol"), (b.connection_id, "dave")]), members)
        expect(len(list(service.list_connections(group="team", top=1))) == 1, "top")
        service.send_to_group("team", {"n": 1})
        a.wait_messages(1), b.wait_messages(1)
        a.take(), b.take()
        service.remove_connection_from_group("team", a.connection_id)
        service.remove_user_from_group("team", "dave")
        expect(not service.group_exists("team"), "group empty after removals")
        service.add_connection_to_group("x", a.connection_id)
        service.add_connection_to_group("y", a.connection_id)
        service.remove_connection_from_all_groups(a.connection_id)
        service.add_user_to_group("z", "dave")
        service.remove_user_from_all_groups("dave")
        expect(not any(service.group_exists(g) for g in ["x", "y", "z"]), "all groups left")
        service.send_to_group("team", "nobody hears this", content_type="text/plain")
        settle()
        expect(a.take() == [] and b.take() == [], "removed members get nothing")
        try:
            service.add_connection_to_group("team", "no-such-connection")
            raise AssertionError("adding an unknown connection should fail")
        except ResourceNotFoundError:
            pass
    finally:
        a.close(), b.close()


@scenario
def permissions_from_roles_and_grants():
    a = Client(user="erin", roles=["webpubsub.joinLeaveGroup.room", "webpubsub.sendToGroup.room"])
    b = Client(user="frank")
    try:
        a.client.join_group("room")
        try:
            b.client.join_group("room")
            raise AssertionError("join without permission should fail")
        except SendMessageError as e:
            expect(e.error_detail.name == "Forbidden", e.error_detail)
        try:
            a.client.join_group("other")
            raise AssertionError("join of another group should fail")
        except SendMessageError as e:
            expect(e.error_detail.name == "Forbidden", e.error_detail)
        service.grant_permission("joinLeaveGroup", b.connection_id, target_name="room")
        expect(service.has_permission("joinLeaveGroup", b.connection_id, target_name="room"), "granted")
        expect(not service.has_permission("sendToGroup", b.connection_id, target_name="room"), "not granted")
        b.client.join_group("room")
        try:
            b.client.send_to_group("room", "hi", WebPubSubDataType.TEXT)
            raise AssertionError("send without permission should fail")
        except SendMessageError as e:
            expect(e.error_detail.name == "Forbidden", e.error_detail)
        service.grant_permission("sendToGroup", b.connection_id)
        b.client.send_to_group("room", "from frank", WebPubSubDataType.TEXT)
        got = a.wait_messages(1)[0]
        expect(got[:5] == ("group", "room", "text", "from frank", "frank"), got)
        service.revoke_permission("sendToGroup", b.connection_id)
        expect(not service.has_permission("sendToGroup", b.connection_id, target_name="room"), "revoked")
    finally:
        a.close(), b.close()


@scenario
def client_publish_echo_and_data_types():
    for protocol in [WebPubSubProtocolType.JSON, WebPubSubProtocolType.JSON_RELIABLE]:
        roles = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]
        a = Client(user="gina", roles=roles, protocol=protocol)
        b = Client(user="hank", roles=roles, protocol=protocol)
        try:
            a.client.join_group("chat")
            b.client.join_group("chat")
            a.client.send_to_group("chat", {"k": "v"}, WebPubSubDataType.JSON)
            a.client.send_to_group("chat", "plain", WebPubSubDataType.TEXT, no_echo=True)
            a.client.send_to_group("chat", memoryview(b"\x01\x02"), WebPubSubDataType.BINARY)
            got_b = [m[:5] for m in b.wait_messages(3)]
            expect(got_b == [("group", "chat", "json", {"k": "v"}, "gina"), ("group", "chat", "text", "plain", "gina"),
                             ("group", "chat", "binary", b"\x01\x02", "gina")], got_b)
            got_a = [m[3] for m in a.wait_messages(2)]
            settle()
            expect([m[3] for m in a.messages] == [{"k": "v"}, b"\x01\x02"], f"noEcho: {a.messages}")
            a.client.send_event("ping-event", "x", WebPubSubDataType.TEXT)  # no handler: acknowledged
        finally:
            a.close(), b.close()


@scenario
def duplicate_ack_id_is_reported():
    a = Client(user="ivy", roles=["webpubsub.joinLeaveGroup"])
    try:
        a.client.join_group("g", ack_id=42)
        a.client.join_group("g", ack_id=42)  # Duplicate counts as success for the SDK
    finally:
        a.close()


@scenario
def close_operations_disconnect_clients():
    a = Client(user="jack", groups=["closers"], protocol=WebPubSubProtocolType.JSON)
    b = Client(user="kate", groups=["closers"], protocol=WebPubSubProtocolType.JSON)
    c = Client(user="kate", protocol=WebPubSubProtocolType.JSON)
    d = Client(user="liam", protocol=WebPubSubProtocolType.JSON)
    try:
        service.close_connection(a.connection_id, reason="bye jack")
        a.wait(lambda: a.disconnected, "jack disconnected")
        expect(a.disconnected[0] == "bye jack", a.disconnected)
        expect(not service.connection_exists(a.connection_id), "jack gone")
        service.close_group_connections("closers", excluded=[b.connection_id], reason="x")
        settle()
        expect(service.connection_exists(b.connection_id), "excluded connection stays")
        service.close_user_connections("kate", reason="bye kate")
        b.wait(lambda: b.disconnected, "kate 1"), c.wait(lambda: c.disconnected, "kate 2")
        # (The SDK reconnects on its own after a close, as a new connection: check the old ids.)
        expect(not service.connection_exists(b.connection_id) and not service.connection_exists(c.connection_id), "kate's connections gone")
        service.close_all_connections(excluded=[d.connection_id])
        settle()
        expect(service.connection_exists(d.connection_id), "excluded stays")
        service.close_all_connections(reason="all done")
        d.wait(lambda: d.disconnected, "liam")
    finally:
        for x in (a, b, c, d):
            x.close()


@scenario
def reliable_reconnect_loses_and_duplicates_nothing():
    a = Client(user="mia", groups=["stream"])
    try:
        for i in range(5):
            service.send_to_group("stream", {"i": i})
        a.wait_messages(5)
        # Drop the TCP connection under the client: no close frame, so it recovers.
        a.client._ws.sock.sock.shutdown(socket.SHUT_RDWR)
        for i in range(5, 15):
            service.send_to_group("stream", {"i": i})
        got = a.wait_messages(15, timeout=20)
        expect([m[3]["i"] for m in got] == list(range(15)), [m[3] for m in got])
        expect([m[5] for m in got] == list(range(1, 16)), "sequence ids in order, each once")
        expect(len(a.connected) == 1, "recovery is not a new connection")
        expect(service.connection_exists(a.connection_id), "same connection id after recovery")
        settle()
        expect(len(a.messages) == 15, "no duplicates")
    finally:
        a.close()


@scenario
def generate_token_and_errors():
    token = service.get_client_access_token(user_id="u", roles=["r"], groups=["g"])
    expect(token["url"].startswith("ws://") and "access_token=" in token["url"], token)
    try:
        service.send_to_all("x", content_type="text/plain", filter="userId eq")
        raise AssertionError("a bad filter should be refused")
    except HttpResponseError as e:
        expect(e.status_code == 400, e.status_code)
    bad = WebPubSubServiceClient.from_connection_string(CS.replace("AccessKey=", "AccessKey=wrong"), hub=HUB, retry_total=0)
    try:
        bad.send_to_all("x", content_type="text/plain")
        raise AssertionError("a wrong key should be refused")
    except HttpResponseError as e:
        expect(e.status_code == 401, e.status_code)


print(f"{len(failures)} failed", flush=True)
sys.exit(1 if failures else 0)
