import BridgeJSON
import Foundation
import HTTPTypes
import Hummingbird
public import Logging
import NIOCore
public import ServiceLifecycle
import Synchronization
import WebPubSub

/// The bridge's one HTTP listener (`server.listen`): the upstream event handler at
/// `{eventHandler.path}/{hub}`, `/healthz` (the process is up) and `/readyz` (200 when every
/// adapter is healthy, 503 with the problems otherwise).
public final class BridgeServer: Service, Sendable {
    public let host: String
    public let port: Int
    let handler: EventHandler?
    let readiness: @Sendable () -> [String]
    let logger: Logger
    private let listening = Mutex<(port: Int?, waiters: [CheckedContinuation<Int, Never>])>((nil, []))

    public init(host: String, port: Int, handler: EventHandler?, readiness: @escaping @Sendable () -> [String], logger: Logger) {
        self.host = host
        self.port = port
        self.handler = handler
        self.readiness = readiness
        self.logger = logger
    }

    /// The port once listening (the chosen one when `port` is 0).
    public func waitUntilListening() async -> Int {
        await withCheckedContinuation { continuation in
            let port = listening.withLock { l -> Int? in
                if let p = l.port { return p }
                l.waiters.append(continuation)
                return nil
            }
            if let port { continuation.resume(returning: port) }
        }
    }

    public func run() async throws {
        let app = Application(
            responder: CallbackResponder<BasicRequestContext> { [self] request, _ in
                await self.respond(request)
            },
            configuration: .init(address: .hostname(host, port: port), serverName: "wps-bridge"),
            onServerRunning: { [self] channel in
                let port = channel.localAddress?.port ?? 0
                let waiters = listening.withLock { l in
                    l.port = port
                    defer { l.waiters.removeAll() }
                    return l.waiters
                }
                for w in waiters { w.resume(returning: port) }
                logger.info("bridge server listening", metadata: ["wps.server": "http://\(host):\(port)"])
            },
            logger: logger)
        try await app.run()
    }

    func respond(_ request: Request) async -> Response {
        var request = request
        let path = request.uri.path
        if path == "/healthz" { return Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }
        if path == "/readyz" {
            let problems = readiness()
            let text = problems.isEmpty ? "ready\n" : problems.joined(separator: "\n") + "\n"
            return Response(status: problems.isEmpty ? .ok : .serviceUnavailable, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        if let handler {
            let prefix = handler.configuration.path
            if path.hasPrefix(prefix + "/") {
                let rest = path.dropFirst(prefix.count + 1)
                guard !rest.isEmpty, !rest.contains("/") else { return plain(.notFound, "no such resource\n") }
                let body: [UInt8]
                do {
                    body = Array(try await request.collectBody(upTo: 1024 * 1024 + 1024).readableBytesView)
                } catch {
                    return plain(.contentTooLarge, "the body is larger than 1 MiB\n")
                }
                var headers: [String: String] = [:]
                for field in request.headers where headers[field.name.canonicalName] == nil { headers[field.name.canonicalName] = field.value }
                let answer = await handler.handle(
                    HandlerRequest(method: request.method.rawValue, hub: percentDecode(rest), headers: headers, query: Query(request.uri.query), body: body))
                var fields = HTTPFields()
                for (name, value) in answer.headers { if let n = HTTPField.Name(name) { fields.append(HTTPField(name: n, value: value)) } }
                return Response(status: .init(code: answer.status), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: answer.body)))
            }
        }
        return plain(.notFound, "no such resource\n")
    }

    func plain(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}
