import AsyncHTTPClient
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Synchronization

/// An HTTP reverse proxy on a free loopback port that sends each request to the next of its
/// backends in turn (per request, not per connection: a keep-alive client still reaches all of
/// them), as a load balancer in front of several replicas does.
package final class RoundRobinProxy: Sendable {
    private let server = LoopbackServer()
    private let backends: [Int]
    private let next = Atomic<Int>(0)
    private let counts: Mutex<[Int]>
    /// Backends that refused a connection, skipped until then (a load balancer's health check).
    private let downUntil: Mutex<[Int: ContinuousClock.Instant]> = Mutex([:])
    /// A dead backend is refused at once (AsyncHTTPClient would otherwise retry the connection
    /// until the request's deadline), so the client sees 502 as from a load balancer.
    private let client: HTTPClient = {
        var configuration = HTTPClient.Configuration(timeout: .init(connect: .seconds(1)))
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    package var port: Int { server.port }
    /// Requests forwarded to each backend, in the order of `backends`.
    package var forwarded: [Int] { counts.withLock { $0 } }

    /// - Parameter backends: ports on 127.0.0.1.
    package init(backends: [Int]) async throws {
        self.backends = backends
        counts = Mutex(Array(repeating: 0, count: backends.count))
        try await server.start(label: "round-robin-proxy") { [self] request in try await self.forward(request) }
    }

    package func stop() async {
        await server.stop()
        try? await client.shutdown()
    }

    private func forward(_ request: Request) async throws -> Response {
        var request = request
        let body = try await request.collectBody(upTo: 16 * 1024 * 1024)
        let first = next.wrappingAdd(1, ordering: .relaxed).oldValue
        var failures: [String] = []
        // A backend that refuses the connection got nothing: the next one is tried, as a load
        // balancer does. One that fails after taking the request is answered with 502 (the
        // caller decides whether to send it again).
        let now = ContinuousClock.now
        let order = (0..<backends.count).map { (first + $0) % backends.count }
        let up = downUntil.withLock { down in order.filter { (down[$0] ?? now) <= now } }
        for index in up.isEmpty ? order : up {
            counts.withLock { $0[index] += 1 }
            var outbound = HTTPClientRequest(url: "http://127.0.0.1:\(backends[index])\(request.uri.description)")
            outbound.method = HTTPMethod(rawValue: request.method.rawValue)
            for field in request.headers where field.name != .contentLength && field.name != .connection {
                outbound.headers.add(name: field.name.rawName, value: field.value)
            }
            if body.readableBytes > 0 { outbound.body = .bytes(body) }
            do {
                let answer = try await client.execute(outbound, timeout: .seconds(30))
                let bytes = try await answer.body.collect(upTo: 16 * 1024 * 1024)
                var fields = HTTPFields()
                for (name, value) in answer.headers {
                    guard let field = HTTPField.Name(name), field != .contentLength, field != .connection, field != .transferEncoding else {
                        continue
                    }
                    fields.append(HTTPField(name: field, value: value))
                }
                return Response(status: .init(code: Int(answer.status.code)), headers: fields, body: ResponseBody(byteBuffer: bytes))
            } catch {
                let text = "\(error)"
                failures.append("backend \(backends[index]): \(text)")
                let refused = text.contains("connectionRefused") || text.contains("Connection refused") || text.contains("connectTimeout")
                if !refused { break }
                downUntil.withLock { $0[index] = .now + .seconds(5) }
            }
        }
        return Response(status: .badGateway, body: ResponseBody(byteBuffer: ByteBuffer(string: failures.joined(separator: "\n"))))
    }
}
