import NIOCore
import Testing

@testable import LocalHub

@Suite struct FrameTests {
    /// A text frame for plain clients is valid UTF-8 even when the payload is not (an upstream
    /// reply may declare another charset); binary goes as it is.
    @Test func plainTextFramesAreValidUTF8() {
        let bytes: [UInt8] = [0x41, 0xFF, 0x42]
        let text = Outgoing(source: .server, dataType: .text, payload: bytes)
        #expect(String(buffer: text.payloadBytes) == "A\u{FFFD}B")
        #expect(String(validating: Array(text.payloadBytes.readableBytesView), as: UTF8.self) != nil)
        #expect(Array(Outgoing(source: .server, dataType: .binary, payload: bytes).payloadBytes.readableBytesView) == bytes)
        // The JSON-protocol frame is rendered once, whole.
        let json = Outgoing(source: .group("g", fromUserId: "u"), dataType: .json, payload: Array(#"{"a":1}"#.utf8))
        #expect(String(buffer: json.jsonFrameBytes) == json.jsonFrame(sequenceId: nil))
        #expect(
            String(buffer: json.jsonFrameBytes) == #"{"type":"message","from":"group","group":"g","fromUserId":"u","dataType":"json","data":{"a":1}}"#
        )
    }
}
