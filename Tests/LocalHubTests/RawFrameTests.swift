import BridgeTestSupport
import Foundation
import LocalHub
import Testing
import WebPubSub
import WebPubSubProtocol

#if canImport(Glibc)
import Glibc
#endif

/// Frames no WebSocket library would send, written byte by byte on a plain socket.
@Suite struct RawFrameTests {
    func upgrade(_ cs: ConnectionString, subprotocol: String = "json.webpubsub.azure.v1") async throws -> RawSocket {
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "raw", roles: [], groups: [], expiresIn: .seconds(600))
        let url = try #require(URL(string: access.url))
        let socket = try RawSocket(port: try #require(url.port))
        socket.write(
            Array(
                ("GET \(url.path)?\(try #require(url.query)) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: \(subprotocol)\r\n\r\n")
                    .utf8))
        let head = try #require(await socket.readHead())
        try #require(head.hasPrefix("HTTP/1.1 101"), "\(head)")
        return socket
    }

    /// The service's MQTT and Socket.IO endpoints are refused with the reason, not a bare 404:
    /// this hub speaks the Web PubSub subprotocols only. Their tokens are issued all the same.
    @Test func mqttAndSocketIOClientsAreRefusedWithAReason() async throws {
        try await withHub { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            for (type, name) in [(ClientType.mqtt, "MQTT"), (.socketIO, "SocketIO")] {
                let token = try await client.generateClientToken(hub: "chat", userId: "u", clientType: type)
                let claims = try AccessKeyJWT.verify(token, keys: [cs.accessKey])
                #expect(claims.audience?.hasSuffix(type.hubsPath + "chat") == true, "\(claims.audience ?? "nil")")
                let access = try ClientAccess.make(
                    endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "u", roles: [], groups: [], expiresIn: .seconds(60),
                    clientType: type)
                let url = try #require(URL(string: access.url))
                #expect(url.path == type.hubsPath + "chat")
                let socket = try RawSocket(port: try #require(url.port))
                socket.write(
                    Array(
                        ("GET \(url.path)?\(try #require(url.query)) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").utf8
                    ))
                let head = try #require(await socket.readHead())
                #expect(head.hasPrefix("HTTP/1.1 400"), "\(head)")
                _ = await socket.fill(socket.buffer.count + 40)
                let body = String(decoding: socket.buffer, as: UTF8.self)
                #expect(body.contains("does not speak \(name) clients"), "\(body)")
            }
        }
    }

    /// The close code of the first close frame, skipping data frames before it.
    func closeCode(_ socket: RawSocket) async -> Int? {
        while let frame = await socket.readFrame() {
            if frame.opcode == 0x8 { return frame.payload.count >= 2 ? Int(frame.payload[0]) << 8 | Int(frame.payload[1]) : 0 }
        }
        return nil
    }

    /// A text frame that is not UTF-8 ends the connection with 1007 (RFC 6455 7.4.1): it is not
    /// repaired into U+FFFD and taken (the frame here is valid JSON around the bad bytes, so a
    /// repairing hub would answer it).
    @Test func anInvalidUTF8TextFrameEndsTheConnectionWith1007() async throws {
        try await withHub { _, cs in
            let socket = try await upgrade(cs)
            // A valid frame first: the connection works.
            socket.sendFrame(opcode: 0x1, Array(#"{"type":"ping"}"#.utf8))
            var pong = false
            while let frame = await socket.readFrame() {
                if frame.opcode == 0x1, String(decoding: frame.payload, as: UTF8.self).contains("pong") {
                    pong = true
                    break
                }
            }
            #expect(pong, "the hub answers a valid frame")
            // 0xC3 0x28: a two-byte sequence whose second byte is not a continuation byte,
            // inside a JSON string.
            socket.sendFrame(opcode: 0x1, Array(#"{"type":"ping","x":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8))
            var code: Int?
            var ponged = false
            while let frame = await socket.readFrame() {
                if frame.opcode == 0x8 {
                    code = frame.payload.count >= 2 ? Int(frame.payload[0]) << 8 | Int(frame.payload[1]) : 0
                    break
                }
                if String(decoding: frame.payload, as: UTF8.self).contains("pong") { ponged = true }
            }
            #expect(code == 1007 && !ponged, "close code: \(String(describing: code)), answered: \(ponged)")
        }
    }

    /// A continuation frame with no message to continue is a protocol error: close 1002.
    @Test func aStrayContinuationFrameEndsTheConnectionWith1002() async throws {
        try await withHub { _, cs in
            let socket = try await upgrade(cs)
            socket.sendFrame(opcode: 0x0, Array(#"{"type":"ping"}"#.utf8))
            #expect(await closeCode(socket) == 1002)
        }
    }

    /// A reliable session does not survive a bad frame either: it is closed with the RFC's code,
    /// not kept for a reconnect.
    @Test func aReliableSessionEndsOnAnInvalidFrame() async throws {
        try await withHub { _, cs in
            let socket = try await upgrade(cs, subprotocol: "json.reliable.webpubsub.azure.v1")
            socket.sendFrame(opcode: 0x1, [0x22, 0xFF, 0x22])
            #expect(await closeCode(socket) == 1007)
        }
    }
}
