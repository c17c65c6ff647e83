import BridgeTestSupport
import Foundation
import HTTPGuards
import LocalHub
import NIOCore
import Testing
import WebPubSub

/// Slow, idle and numerous connections against the hub's port: a header deadline, a cap, and
/// authentication before any body is read.
@Suite(.serialized) struct ConnectionLimitTests {
    /// A request head sent one byte at a time, slower than the deadline allows, is cut off.
    @Test func aRequestWhoseHeadersTrickleInIsCutOff() async throws {
        try await withHub({ $0.limits.headerTimeout = .seconds(1) }) { _, cs in
            let port = try #require(URL(string: cs.endpoint)?.port)
            let socket = try RawSocket(port: port)
            let started = ContinuousClock.now
            var closed = false
            for byte in Array("GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".utf8) + Array(repeating: UInt8(ascii: "a"), count: 100) {
                socket.write([byte])
                if await socket.closedByPeer(within: .milliseconds(150)) {
                    closed = true
                    break
                }
            }
            #expect(closed, "still open after \(ContinuousClock.now - started)")
            #expect(ContinuousClock.now - started < .seconds(4))
        }
    }

    /// 2,000 sockets that connect and send nothing: a real client is still served while they
    /// are open, and the hub closes them at the header deadline.
    @Test func twoThousandIdleSocketsDoNotStopARealClient() async throws {
        RawSocket.raiseFileLimit()
        try await withHub({ $0.limits.headerTimeout = .seconds(3) }) { _, cs in
            let port = try #require(URL(string: cs.endpoint)?.port)
            // Connected on a thread of their own: 2,000 blocking connects must not hold one of
            // the few threads of the concurrency pool, which other tests' hubs run on.
            let idle: [RawSocket] = try await withCheckedThrowingContinuation { continuation in
                Thread {
                    do {
                        continuation.resume(returning: try (0..<2000).map { _ in try RawSocket(port: port) })
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }.start()
            }
            let client = WebPubSubServiceClient(connectionString: cs)
            let started = ContinuousClock.now
            #expect(try await client.serviceIsHealthy())
            try await client.sendToAll(hub: "chat", payload: .init(string: "x"), contentType: "text/plain")
            #expect(ContinuousClock.now - started < .seconds(2), "served while 2,000 sockets idle")
            try await client.shutdown()
            // Cut off at the deadline: sample some of them.
            for socket in idle.prefix(50) {
                #expect(await socket.closedByPeer(within: .seconds(8)))
            }
            #expect(await idle.last!.closedByPeer(within: .seconds(8)))
        }
    }

    /// At the cap, a new connection waits until one closes; it is not served meanwhile.
    @Test func theConnectionCapHoldsNewConnections() async throws {
        try await withHub({
            $0.limits.maxConnections = 5
            $0.limits.headerTimeout = .seconds(2)
        }) { _, cs in
            let port = try #require(URL(string: cs.endpoint)?.port)
            let idle = try (0..<5).map { _ in try RawSocket(port: port) }
            try await Task.sleep(for: .milliseconds(200))
            let waiting = try RawSocket(port: port)
            waiting.write(Array("GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
            // Not served while five connections hold the cap.
            #expect(await !waiting.closedByPeer(within: .milliseconds(800)))
            #expect(waiting.buffer.isEmpty, "served past the cap: \(String(decoding: waiting.buffer, as: UTF8.self))")
            // The idle ones reach their deadline; then it is served.
            #expect(await waiting.fill(12))
            // (401: the request has no token; what matters is that it is answered now.)
            #expect(String(decoding: waiting.buffer.prefix(9), as: UTF8.self) == "HTTP/1.1 ", "\(String(decoding: waiting.buffer, as: UTF8.self))")
            withExtendedLifetime(idle) {}
        }
    }

    /// A request with a wrong token is refused from its headers: the 1 MB body it announces is
    /// never waited for. A good token with a body over the limit gets 413 the same way.
    @Test func authenticationComesBeforeTheBody() async throws {
        try await withHub { _, cs in
            let port = try #require(URL(string: cs.endpoint)?.port)
            for (token, expected) in [("not-a-token", "HTTP/1.1 401"), (Self.goodToken(cs), "HTTP/1.1 413")] {
                let socket = try RawSocket(port: port)
                socket.write(
                    Array(
                        ("POST /api/hubs/chat/:send?api-version=2024-12-01 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \(token)\r\n"
                            + "Content-Type: text/plain\r\nContent-Length: \(expected.hasSuffix("401") ? 1_000_000 : 5_000_000)\r\n\r\n").utf8))
                let started = ContinuousClock.now
                #expect(await socket.fill(12), "no answer without the body")
                #expect(String(decoding: socket.buffer.prefix(12), as: UTF8.self) == expected, "\(String(decoding: socket.buffer, as: UTF8.self))")
                #expect(ContinuousClock.now - started < .seconds(3))
            }
        }
    }

    static func goodToken(_ cs: ConnectionString) -> String {
        AccessKeyJWT.restToken(
            url: cs.endpoint + "/api/hubs/chat/:send?api-version=2024-12-01", key: cs.accessKey, expiry: Date().addingTimeInterval(600))
    }
}
