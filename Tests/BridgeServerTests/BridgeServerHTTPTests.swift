import BridgeCore
import BridgeTestSupport
import Foundation
import HTTPGuards
import Testing
import WebPubSub

@testable import BridgeServer

/// The event handler through the bridge's real HTTP server: what the handler never sees
/// (the body limit, headers read before any body, percent-encoded hubs, slow clients).
@Suite struct BridgeServerHTTPTests {
    func withServer(limits: ConnectionLimits = .init(), _ body: (Int, MemorySink) async throws -> Void) async throws {
        let (h, sink) = handler()
        let server = BridgeServer(host: "127.0.0.1", port: 0, handler: h, readiness: { [] }, limits: limits, logger: quiet)
        let running = Task { try await server.run() }
        defer { running.cancel() }
        let port = try await server.waitUntilListening()
        try await body(port, sink)
    }

    /// The head of an event request as the service sends it, with `Content-Length: length`.
    func head(path: String = "/eventhandler/chat", signedWith: AccessKey = key, length: Int) -> [UInt8] {
        let request = event("azure.webpubsub.user.chat", name: "chat", signedWith: signedWith)
        var text = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \(length)\r\n"
        for (name, value) in request.headers where name != "content-length" { text += "\(name): \(value)\r\n" }
        return Array((text + "\r\n").utf8)
    }

    func status(_ socket: RawSocket) async -> String? {
        guard await socket.fill(12) else { return nil }
        return String(decoding: socket.buffer.prefix(12), as: UTF8.self)
    }

    /// A forged signature is refused from the headers: the 1 MB body it announces is never
    /// read (the answer comes while it is still unsent). A signed request over 1 MiB gets 413 so.
    @Test func headersAreCheckedBeforeTheBody() async throws {
        try await withServer { port, sink in
            let forged = try RawSocket(port: port)
            forged.write(head(signedWith: AccessKey("not-the-key"), length: 1_000_000))
            #expect(await status(forged) == "HTTP/1.1 401")
            let big = try RawSocket(port: port)
            big.write(head(length: 2_000_000))
            #expect(await status(big) == "HTTP/1.1 413")
            #expect(sink.written.isEmpty)
        }
    }

    /// A whole event over HTTP, to a percent-encoded hub path, reaches the sink.
    @Test func anEventOverHTTPWithAnEncodedHubPath() async throws {
        try await withServer { port, sink in
            let socket = try RawSocket(port: port)
            let body = Array(#"{"text":"hi"}"#.utf8)
            socket.write(head(path: "/eventhandler/ch%61t", length: body.count) + body)
            #expect(await status(socket) == "HTTP/1.1 204")
            #expect(sink.written.count == 1)
        }
    }

    /// The service's URL templates may put more after the hub (`/eventhandler/{hub}/{event}`):
    /// the hub is the segment after the path, whatever follows.
    @Test func pathsBelowTheHubReachTheHandler() async throws {
        try await withServer { port, sink in
            let body = Array(#"{"text":"hi"}"#.utf8)
            for path in ["/eventhandler/chat/chat", "/eventhandler/chat/user/chat/more"] {
                let socket = try RawSocket(port: port)
                socket.write(head(path: path, length: body.count) + body)
                #expect(await status(socket) == "HTTP/1.1 204", "\(path)")
            }
            #expect(sink.written.count == 2)
            let other = try RawSocket(port: port)
            other.write(head(path: "/eventhandler/other/chat", length: body.count) + body)
            #expect(await status(other) == "HTTP/1.1 404", "the path names the hub: one no rule names")
            let outside = try RawSocket(port: port)
            outside.write(head(path: "/elsewhere/chat", length: body.count) + body)
            #expect(await status(outside) == "HTTP/1.1 404")
            #expect(sink.written.count == 2)
        }
    }

    @Test func aRequestWhoseHeadersTrickleInIsCutOff() async throws {
        var limits = ConnectionLimits()
        limits.headerTimeout = .seconds(1)
        try await withServer(limits: limits) { port, _ in
            let socket = try RawSocket(port: port)
            let started = ContinuousClock.now
            var closed = false
            for byte in head(length: 0) {
                socket.write([byte])
                if await socket.closedByPeer(within: .milliseconds(150)) {
                    closed = true
                    break
                }
            }
            #expect(closed, "still open after \(ContinuousClock.now - started)")
        }
    }
}
