import BridgeTestSupport
import Foundation
import LocalHub
import Testing
import WebPubSub
#if canImport(Glibc)
import Glibc
#endif

/// Frames no WebSocket library would send, written byte by byte on a plain socket.
@Suite struct RawFrameTests {
    func upgrade(_ cs: ConnectionString) async throws -> RawSocket {
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "raw", roles: [], groups: [], expiresIn: .seconds(600))
        let url = try #require(URL(string: access.url))
        let socket = try RawSocket(port: try #require(url.port))
        socket.write(Array((
            "GET \(url.path)?\(try #require(url.query)) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: json.webpubsub.azure.v1\r\n\r\n").utf8))
        let head = try #require(await socket.readHead())
        try #require(head.hasPrefix("HTTP/1.1 101"), "\(head)")
        return socket
    }

    /// The close code of the first close frame, skipping data frames before it.
    func closeCode(_ socket: RawSocket) async -> Int? {
        while let frame = await socket.readFrame() {
            if frame.opcode == 0x8 { return frame.payload.count >= 2 ? Int(frame.payload[0]) << 8 | Int(frame.payload[1]) : 0 }
        }
        return nil
    }

    /// A text frame that is not UTF-8 ends the connection: it is not repaired into U+FFFD and
    /// taken (the frame here is valid JSON around the bad bytes, so a repairing hub would send
    /// it on). RFC 6455 asks for close code 1007; the hub closes with 1000 so far (the close
    /// goes through the hub's own terminate path; see the issue note).
    @Test func anInvalidUTF8TextFrameEndsTheConnection() async throws {
        try await withHub { _, cs in
            let socket = try await upgrade(cs)
            // A valid frame first: the connection works.
            socket.sendFrame(opcode: 0x1, Array(#"{"type":"ping"}"#.utf8))
            var pong = false
            while let frame = await socket.readFrame() {
                if frame.opcode == 0x1, String(decoding: frame.payload, as: UTF8.self).contains("pong") { pong = true; break }
            }
            #expect(pong, "the hub answers a valid frame")
            // 0xC3 0x28: a two-byte sequence whose second byte is not a continuation byte,
            // inside a JSON string.
            socket.sendFrame(opcode: 0x1, Array(#"{"type":"ping","x":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8))
            var closed = false, ponged = false
            while let frame = await socket.readFrame() {
                if frame.opcode == 0x8 { closed = true; break }
                if String(decoding: frame.payload, as: UTF8.self).contains("pong") { ponged = true }
            }
            #expect(closed && !ponged, "closed: \(closed), answered: \(ponged)")
        }
    }
}
