import BridgeCore
import BridgeCrypto
package import BridgeJSON
import BridgeObservability
import Foundation
package import HTTPGuards
import HTTPTypes
import Hummingbird
import HummingbirdCore
package import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import WebPubSub

/// The bridge's one HTTP listener (`server.listen`): the upstream event handler at
/// `{eventHandler.path}/{hub}`, `/healthz` (the process is up), `/readyz` (200 when every
/// adapter is healthy, 503 otherwise; a JSON body names what is not ready) and `/metrics`
/// (Prometheus text format).
package final class BridgeServer: Service, Sendable {
    package let host: String
    package let port: Int
    let handler: EventHandler?
    let readiness: @Sendable () -> [String]
    let metrics: (@Sendable () -> [UInt8])?
    /// `POST /-/reload`, with the token it needs (`Authorization: Bearer` or `X-WPS-Reload-Token`).
    package struct ReloadEndpoint: Sendable {
        let token: String
        /// The HTTP status and what happened (the validation report when refused).
        let reload: @Sendable () async -> (status: Int, report: String)

        package init(token: String, reload: @escaping @Sendable () async -> (status: Int, report: String)) {
            self.token = token
            self.reload = reload
        }
    }

    let reload: ReloadEndpoint?
    /// More of `/readyz`'s answer (`leader`), beside `ready` and `problems`.
    let readyDetails: @Sendable () -> [(String, JSONValue)]
    let limits: ConnectionLimits
    /// What this listener serves besides `/healthz`: the event handler, the operator's
    /// endpoints (`/readyz`, `/metrics`, `/-/reload`), or both (`server.adminListen` splits them).
    package struct Endpoints: OptionSet, Sendable {
        package let rawValue: Int
        package init(rawValue: Int) { self.rawValue = rawValue }
        package static let events = Endpoints(rawValue: 1)
        package static let operations = Endpoints(rawValue: 2)
        package static let all: Endpoints = [.events, .operations]
    }

    let endpoints: Endpoints
    let logger: Logger
    private let listening = ListeningPort("the bridge server")
    /// The largest event body taken.
    static let maxBody = 1024 * 1024

    package init(
        host: String, port: Int, handler: EventHandler?, readiness: @escaping @Sendable () -> [String],
        metrics: (@Sendable () -> [UInt8])? = nil, reload: ReloadEndpoint? = nil, limits: ConnectionLimits = .init(),
        endpoints: Endpoints = .all, readyDetails: @escaping @Sendable () -> [(String, JSONValue)] = { [] }, logger: Logger
    ) {
        self.readyDetails = readyDetails
        self.reload = reload
        self.limits = limits
        self.endpoints = endpoints
        self.host = host
        self.port = port
        self.handler = handler
        self.readiness = readiness
        self.metrics = metrics
        self.logger = logger
    }

    /// The port once listening (the chosen one when `port` is 0).
    /// - Throws: when the server stopped without listening, or the task is cancelled.
    package func waitUntilListening() async throws -> Int {
        try await listening.wait()
    }

    package func run() async throws {
        defer { listening.stop() }
        let app = Application(
            responder: makeRouter().buildResponder(),
            server: HTTPServerBuilder { [limits] responder in
                HeadDeadlineChildChannel(
                    HTTP1Channel(responder: responder, configuration: .init(idleTimeout: limits.idleTimeAmount)), headerTimeout: limits.headerTimeout)
            },
            configuration: .init(
                address: .hostname(host, port: port), serverName: "wps-bridge", availableConnectionsDelegate: limits.availableConnections),
            onServerRunning: { [self] channel in
                let port = channel.localAddress?.port ?? 0
                listening.set(port)
                logger.info("bridge server listening", metadata: [LogKey.server: "http://\(host):\(port)"])
            },
            logger: logger)
        try await app.run()
    }

    /// The routes of what this listener serves (``Endpoints``); anything else is a plain 404.
    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: PlainNotFound())
        for method in [HTTPRequest.Method.get, .head] {
            router.on("healthz", method: method) { [self] _, _ in plain(.ok, "ok\n") }
        }
        if endpoints.contains(.operations) {
            for method in [HTTPRequest.Method.get, .head] {
                router.on("readyz", method: method) { [self] _, _ in ready() }
                if let metrics {
                    router.on("metrics", method: method) { _, _ in
                        Response(
                            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics())))
                    }
                }
            }
            if let reload {
                router.post("-/reload") { [self] request, _ in await self.reload(request, reload) }
                for method in [HTTPRequest.Method.get, .head, .put, .delete, .patch] {
                    router.on("-/reload", method: method) { [self] _, _ in plain(.methodNotAllowed, "POST to reload\n") }
                }
            }
        }
        if let handler, endpoints.contains(.events) {
            // Every method: the handler answers OPTIONS (abuse protection) and POST, and refuses the rest.
            // The hub is the segment after the path; what follows it (a URL template's `{event}`,
            // `/eventhandler/{hub}/{event}`) is ignored, as the CloudEvents headers name the event.
            for method in [HTTPRequest.Method.options, .post, .get, .head, .put, .delete, .patch] {
                for suffix in ["/:hub", "/:hub/**"] {
                    router.on(RouterPath(handler.configuration.path + suffix), method: method) { [self] request, context in
                        await self.event(request, hub: percentDecode(try context.parameters.require("hub")), handler: handler)
                    }
                }
            }
        }
        return router
    }

    func ready() -> Response {
        let problems = readiness()
        let body =
            JSONValue.object([("ready", .bool(problems.isEmpty)), ("problems", .array(problems.map { .string($0) }))] + readyDetails()).serialized
            + "\n"
        return Response(
            status: problems.isEmpty ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    func reload(_ request: Request, _ reload: ReloadEndpoint) async -> Response {
        let given = request.headers.bearerToken ?? request.headers[HTTPField.Name("X-WPS-Reload-Token")!] ?? ""
        guard constantTimeEquals(given, reload.token) else { return plain(.unauthorized, "a reload needs the reload token\n") }
        let (status, report) = await reload.reload()
        return plain(.init(code: status), report + "\n")
    }

    /// One request of the upstream event handler.
    func event(_ request: Request, hub: String, handler: EventHandler) async -> Response {
        var request = request
        var headers: [String: String] = [:]
        for field in request.headers where headers[field.name.canonicalName] == nil { headers[field.name.canonicalName] = field.value }
        var event = HandlerRequest(method: request.method.rawValue, hub: hub, headers: headers, query: Query(request.uri.query), body: [])
        // Authentication and the CloudEvents headers first: a stranger's body is never read.
        if let refused = handler.refusal(event) { return Self.response(refused) }
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > Self.maxBody {
            return plain(.contentTooLarge, "the body is larger than 1 MiB\n")
        }
        do {
            event.body = Array(try await request.collectBody(upTo: Self.maxBody).readableBytesView)
        } catch {
            return plain(.contentTooLarge, "the body is larger than 1 MiB\n")
        }
        return Self.response(await handler.handle(event))
    }

    static func response(_ answer: HandlerResponse) -> Response {
        var fields = HTTPFields()
        for (name, value) in answer.headers { if let n = HTTPField.Name(name) { fields.append(HTTPField(name: n, value: value)) } }
        return Response(status: .init(code: answer.status), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: answer.body)))
    }

    func plain(_ status: HTTPResponse.Status, _ text: String) -> Response { Self.plain(status, text) }

    static func plain(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// Requests no route takes: a plain-text 404, as before the router.
struct PlainNotFound: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(
        _ request: Request, context: BasicRequestContext, next: (Request, BasicRequestContext) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            return BridgeServer.plain(.notFound, "no such resource\n")
        }
    }
}
