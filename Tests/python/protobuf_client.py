"""A client of the protobuf subprotocols, built from the hub's own .proto at run time
(protoc --python_out; the `protobuf` package): what a protobuf client of the service sends.

  protobuf_client.py PROTO_DIR CLIENT_URL SUBPROTOCOL

Connects with SUBPROTOCOL (protobuf.webpubsub.azure.v1 or protobuf.reliable.webpubsub.azure.v1),
then: joins group g (ack 1), sends text "hi" to g with metadata trace=t1 and ack 2 (it comes
back from the group), sends a json event "echo" with ack 3, invokes "echo" (invocation "i1"),
pings, and sends a frame of an unknown type. Prints one JSON line per message received (the
DownstreamMessage as a dict), and "closed CODE" when the hub closes. Exits 1 on a failure.
"""
import json
import subprocess
import sys
import tempfile

import websocket
from google.protobuf.json_format import MessageToDict

proto_dir, url, subprotocol = sys.argv[1], sys.argv[2], sys.argv[3]
out = tempfile.mkdtemp()
subprocess.run(["protoc", f"--python_out={out}", "-I", proto_dir, f"{proto_dir}/webpubsub_v1.proto"], check=True)
sys.path.insert(0, out)
import webpubsub_v1_pb2 as pb  # noqa: E402

ws = websocket.create_connection(url, subprotocols=[subprotocol], timeout=10)


def send(**message):
    up = pb.UpstreamMessage(**message)
    ws.send_binary(up.SerializeToString())


def receive():
    opcode, data = ws.recv_data(control_frame=False)
    if opcode == websocket.ABNF.OPCODE_CLOSE:
        code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        print(f"closed {code}", flush=True)
        return None
    down = pb.DownstreamMessage()
    down.ParseFromString(data)
    print(json.dumps(MessageToDict(down)), flush=True)
    return down


first = receive()
assert first.system_message.connected_message.connection_id, first
send(join_group_message=pb.UpstreamMessage.JoinGroupMessage(group="g", ack_id=1))
receive()
send(send_to_group_message=pb.UpstreamMessage.SendToGroupMessage(
    group="g", ack_id=2, data=pb.MessageData(text_data="hi"), metadata={"trace": "t1"}))
receive()
receive()
send(event_message=pb.UpstreamMessage.EventMessage(event="echo", ack_id=3, data=pb.MessageData(json_data='{"n":1}')))
receive()
receive()
send(invoke_event_message=pb.UpstreamMessage.InvokeEventMessage(
    event="echo", invocation_id="i1", data=pb.MessageData(binary_data=b"\x00\x01")))
receive()
send(ping_message=pb.UpstreamMessage.PingMessage())
receive()
ws.send_binary(b"\x62\x00")  # field 12 of UpstreamMessage: a message this hub does not serve
while receive() is not None:
    pass
