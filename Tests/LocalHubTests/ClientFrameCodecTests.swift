import BridgeJSON
import HummingbirdWebSocket
import NIOCore
import Testing

@testable import LocalHub

/// The JSON subprotocols' codec, frame by frame: what each client frame reads as, what is
/// refused, and the exact text of what the hub sends.
@Suite struct ClientFrameCodecTests {
    let codec = JSONFrameCodec()

    func decode(_ text: String) throws(FrameDecodingError) -> InboundFrame { try codec.decode(.text(text)) }

    @Test func readsEveryClientFrame() throws {
        #expect(try decode(#"{"type":"joinGroup","group":"g","ackId":1}"#) == .joinGroup(group: "g", ackId: 1))
        #expect(try decode(#"{"type":"leaveGroup","group":"g"}"#) == .leaveGroup(group: "g", ackId: nil))
        #expect(
            try decode(#"{"type":"sendToGroup","group":"g","dataType":"text","data":"hi","noEcho":true,"ackId":2}"#)
                == .sendToGroup(group: "g", data: FrameData(dataType: .text, payload: Array("hi".utf8)), noEcho: true, ackId: 2))
        #expect(
            try decode(#"{"type":"event","event":"e","data":{"a":[1,2]}}"#)
                == .event(name: "e", data: FrameData(dataType: .json, payload: Array(#"{"a":[1,2]}"#.utf8)), ackId: nil))
        #expect(
            try decode(#"{"type":"event","event":"e","dataType":"binary","data":"AAEC"}"#)
                == .event(name: "e", data: FrameData(dataType: .binary, payload: [0, 1, 2]), ackId: nil))
        #expect(try decode(#"{"type":"sequenceAck","sequenceId":7}"#) == .sequenceAck(sequenceId: 7))
        #expect(try decode(#"{"type":"ping"}"#) == .ping)
    }

    /// Fields the hub checks are read as sent: missing ones are nil, data that does not match its
    /// type is nil; the hub answers those with an error ack and keeps the connection.
    @Test func keepsWhatTheHubRefusesForTheHubToAnswer() throws {
        #expect(try decode(#"{"type":"joinGroup","ackId":3}"#) == .joinGroup(group: nil, ackId: 3))
        #expect(
            try decode(#"{"type":"sendToGroup","group":"g","dataType":"text","data":{"x":1}}"#)
                == .sendToGroup(group: "g", data: nil, noEcho: false, ackId: nil))
        #expect(try decode(#"{"type":"event","event":"e","dataType":"binary","data":"%%%"}"#) == .event(name: "e", data: nil, ackId: nil))
        #expect(try decode(#"{"type":"event","event":"e","dataType":"xml","data":"x"}"#) == .event(name: "e", data: nil, ackId: nil))
        #expect(try decode(#"{"type":"sequenceAck","sequenceId":-1}"#) == .sequenceAck(sequenceId: nil))
    }

    @Test(arguments: [
        (#"{not json"#, "not a JSON object"),
        (#"[1,2]"#, "not a JSON object"),
        (#"{"group":"g"}"#, "not a JSON object with a \"type\""),
        (#"{"type":"teleport"}"#, "unknown type 'teleport'"),
        (#"{"type":"ping","ackId":-1}"#, "ackId must be an unsigned integer"),
        (#"{"type":"joinGroup","group":"g","ackId":"1"}"#, "ackId must be an unsigned integer"),
    ])
    func refusesWhatCannotBeRead(text: String, reason: String) {
        #expect {
            try decode(text)
        } throws: { error in
            (error as? FrameDecodingError)?.reason.contains(reason) == true
        }
    }

    @Test func refusesBinaryFrames() {
        #expect(throws: FrameDecodingError.self) { try codec.decode(.binary(ByteBuffer(bytes: [1, 2]))) }
    }

    @Test func writesTheServiceFrames() {
        #expect(
            JSONFrameCodec.text(.connected(connectionId: "c1", userId: "u", reconnectionToken: "t"))
                == #"{"type":"system","event":"connected","connectionId":"c1","userId":"u","reconnectionToken":"t"}"#)
        #expect(
            JSONFrameCodec.text(.connected(connectionId: "c1", userId: nil, reconnectionToken: nil))
                == #"{"type":"system","event":"connected","connectionId":"c1"}"#)
        #expect(JSONFrameCodec.text(.disconnected(reason: "bye \"now\"")) == #"{"type":"system","event":"disconnected","message":"bye \"now\""}"#)
        #expect(JSONFrameCodec.text(.ack(ackId: 5, error: nil)) == #"{"type":"ack","ackId":5,"success":true}"#)
        #expect(
            JSONFrameCodec.text(.ack(ackId: 6, error: .forbidden("no")))
                == #"{"type":"ack","ackId":6,"success":false,"error":{"name":"Forbidden","message":"no"}}"#)
        #expect(JSONFrameCodec.text(.pong) == #"{"type":"pong"}"#)
    }

    @Test func onlyTheJSONProtocolsHaveACodec() {
        #expect(ClientProtocol.json.codec != nil && ClientProtocol.reliableJSON.codec != nil)
        #expect(ClientProtocol.plain.codec == nil)
    }
}

/// The protobuf subprotocols' codec with frames no client library would send.
@Suite struct ProtobufFrameCodecTests {
    let codec = ProtobufFrameCodec()

    func reason(_ message: WebSocketMessage) -> String? {
        do {
            _ = try codec.decode(message)
            return nil
        } catch {
            return error.reason
        }
    }

    @Test func refusesWhatIsNotAnUpstreamMessage() throws {
        #expect(reason(.text("{}"))?.contains("binary frames only") == true)
        #expect(reason(.binary(ByteBuffer(bytes: [0x0A, 0xFF, 0xFF, 0xFF])))?.contains("not a protobuf UpstreamMessage") == true)
        #expect(reason(.binary(ByteBuffer(bytes: [])))?.contains("does not serve") == true, "an empty message names no type")
        // Written byte by byte: invoke_event_message (field 10) with event "e" and no invocation id;
        // send_to_group_message (field 1) to "g" with ttl_seconds (field 5) 301.
        #expect(reason(.binary(ByteBuffer(bytes: [0x52, 0x03, 0x0A, 0x01, 0x65])))?.contains("invocationId") == true)
        let ttl: [UInt8] = [0x0A, 0x06, 0x0A, 0x01, 0x67, 0x28, 0xAD, 0x02]
        let frame = try codec.decode(.binary(ByteBuffer(bytes: ttl)))
        guard case .sendToGroup(_, let data, _, _, _, let seconds) = frame else {
            Issue.record("\(frame)")
            return
        }
        #expect(seconds == -1 && data == nil, "out of range, and no data: both refused by the hub with an ack")
    }
}
