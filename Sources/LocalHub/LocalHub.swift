import AsyncHTTPClient
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
package import HTTPGuards
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
package import Logging
import NIOCore
import NIOWebSocket
import ODataFilter
import ServiceLifecycle
import Synchronization
package import WebPubSub
import WebPubSubProtocol

/// Settings of the embedded hub.
package struct LocalHubConfiguration: Sendable {
    package var host = "127.0.0.1"
    /// 0 picks a free port.
    package var port = 8080
    /// The primary key, then an optional secondary one; every token signed with either is valid.
    package var accessKeys: [AccessKey]
    /// Upstream event handlers by hub (lower-cased), in order: the first that takes an event gets it.
    package var eventHandlers: [String: [EventHandlerSettings]] = [:]
    /// REST requests accepted per second; the rest get 429 with `Retry-After`. nil: no limit.
    package var rateLimit: Int?
    /// Accept client connections without an access token.
    package var allowAnonymous = false
    /// Serve `GET /negotiate` (a client URL with a token for anyone who asks, for one hub and
    /// at most one group) and the demo page. Off by default: for loopback development only.
    package var negotiate = false
    /// How long a reliable session waits for its client to reconnect.
    package var reconnectGrace: Duration = .seconds(30)
    /// The memory kept for reliable replays across all sessions; past it, the sessions holding
    /// the most are ended first.
    package var maxReplayBytes = 256 * 1024 * 1024
    /// The most groups one connection may join itself (`joinGroup`, REST add-to-group).
    package var maxGroupsPerConnection = 1000
    /// The largest client message.
    package var maxMessageBytes = 1024 * 1024
    /// How often an event other than `connect` (`connected`, `disconnected`, user events) is
    /// tried again when the handler answers 5xx or cannot be reached, with backoff from
    /// `upstreamRetryBackoff` doubling up to 5 s. `connect` is not retried: the client's
    /// handshake waits for it. A user event's ack waits for its retries (the client's later
    /// messages wait behind it, which keeps their order).
    package var upstreamRetries = 3
    package var upstreamRetryBackoff: Duration = .milliseconds(500)
    /// Header read deadline, idle timeout and connection cap of the hub's port.
    package var limits = ConnectionLimits()
    /// Entra ID token issuers whose RS256 tokens (audience `https://webpubsub.azure.com`) the
    /// REST API accepts besides access-key tokens; their keys come from OpenID discovery.
    package var trustedIssuers: [String] = []
    /// How long the signing keys of a trusted issuer are used before they are fetched again
    /// (a token naming an unknown key id fetches them sooner, at most every 5 s).
    package var signingKeyRefresh: Duration = .seconds(3600)

    package init(accessKeys: [AccessKey]) {
        self.accessKeys = accessKeys
    }
}

/// An embedded Web PubSub-compatible service: the REST data plane, the client WebSocket
/// endpoint with the JSON subprotocols, groups, users, permissions, filters, and upstream
/// CloudEvents to event handlers. In memory, one process: for development, tests and demos.
package final class LocalHub: Service, Sendable {
    package let configuration: LocalHubConfiguration
    let logger: Logger
    let registry: HubRegistry
    let replayBudget: ReplayBudget
    let listening = ListeningPort("the embedded hub")
    /// Hubs that had connections, for their gauges.
    /// The `hub` label of the hub's metrics.
    let hubLabels = HubMetricLabels()
    let rejectionStore = RejectionStore()
    private let background: (stream: AsyncStream<@Sendable () async -> Void>, continuation: AsyncStream<@Sendable () async -> Void>.Continuation)
    private let limiter: RateLimiter?
    let upstreamClient: HTTPClient
    let upstream: UpstreamCaller
    private let nextConnection = Atomic<Int>(0)
    let entra: EntraVerifier?

    package init(configuration: LocalHubConfiguration, logger: Logger) {
        precondition(!configuration.accessKeys.isEmpty, "the hub needs an access key")
        self.configuration = configuration
        self.logger = logger
        background = AsyncStream.makeStream()
        limiter = configuration.rateLimit.map { RateLimiter(perSecond: $0) }
        registry = HubRegistry(maxGroupsPerConnection: configuration.maxGroupsPerConnection)
        replayBudget = ReplayBudget(limit: configuration.maxReplayBytes)
        upstreamClient = HTTPClient(eventLoopGroupProvider: .singleton)
        upstream = UpstreamCaller(
            httpClient: upstreamClient, keys: configuration.accessKeys, origin: configuration.host, retries: configuration.upstreamRetries,
            retryBackoff: configuration.upstreamRetryBackoff, logger: logger)
        entra =
            configuration.trustedIssuers.isEmpty
            ? nil
            : EntraVerifier(
                issuers: configuration.trustedIssuers, httpClient: upstreamClient, logger: logger,
                refreshInterval: Double(configuration.signingKeyRefresh.components.seconds))
    }

    /// The port, once the hub listens.
    /// - Throws: when the hub stopped without listening, or the task is cancelled.
    package func waitUntilListening() async throws -> Int {
        try await listening.wait()
    }

    /// `http://host:port`, once listening.
    package func endpoint() async throws -> String { "http://\(configuration.host):\(try await waitUntilListening())" }

    /// `Endpoint=http://host;Port=port;AccessKey=key;Version=1.0;`, once listening.
    package func connectionString() async throws -> String {
        let port = try await waitUntilListening()
        return "Endpoint=http://\(configuration.host);Port=\(port);AccessKey=\(configuration.accessKeys[0].value);Version=1.0;"
    }

    package func run() async throws {
        defer { listening.stop() }
        let app = Application(
            responder: makeRouter().buildResponder(),
            server: HTTPServerBuilder { [self] responder in
                HeadDeadlineChildChannel(
                    HTTP1WebSocketUpgradeChannel(
                        responder: responder,
                        configuration: .init(
                            http1: .init(
                                additionalChannelHandlers: [RejectionWriter { [rejections = self.rejectionStore] id in rejections.take(id) }],
                                idleTimeout: configuration.limits.idleTimeAmount),
                            // Text frames must be UTF-8: others close the connection.
                            ws: .init(
                                maxFrameSize: configuration.maxMessageBytes + 1024, autoPing: .enabled(timePeriod: .seconds(30)), validateUTF8: true)),
                        shouldUpgrade: { [self] request, channel, _ in
                            await self.shouldUpgrade(request, channel: channel)
                        }),
                    headerTimeout: configuration.limits.headerTimeout)
            },
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port), serverName: "wps-bridge-hub",
                availableConnectionsDelegate: configuration.limits.availableConnections),
            onServerRunning: { [self] channel in
                let port = channel.localAddress?.port ?? 0
                listening.set(port)
                logger.info("hub listening", metadata: [LogKey.hubEndpoint: "http://\(configuration.host):\(port)"])
            },
            logger: logger)
        await withDiscardingTaskGroup { group in
            group.addTask {
                await withDiscardingTaskGroup { jobs in
                    for await job in self.background.stream { jobs.addTask { await job() } }
                }
            }
            do {
                // On shutdown, close the client sockets first: the server waits for open connections.
                try await withGracefulShutdownHandler {
                    try await app.run()
                } onGracefulShutdown: {
                    self.spawn {
                        for c in self.registry.all(hub: nil) { await self.terminate(c, reason: "ServiceShutdown", notify: true) }
                    }
                }
            } catch {
                logger.error("hub stopped", metadata: [LogKey.error: "\(error)"])
            }
            // Close what is still connected, then stop background work.
            for c in registry.all(hub: nil) {
                await terminate(c, reason: "ServiceShutdown", notify: true)
            }
            background.continuation.finish()
        }
        try? await upstreamClient.shutdown()
    }

    /// Sets the gauges read at scrape time: connections and non-empty groups per hub.
    package func recordMetrics() {
        // A hub whose last client left reads 0, not its last value; hubs past the label limit add up under one label.
        var totals: [String: (connections: Int, groups: Int)] = [:]
        for (hub, size) in registry.sizes() {
            let label = hubLabels.label(hub)
            totals[label] = ((totals[label]?.connections ?? 0) + size.connections, (totals[label]?.groups ?? 0) + size.groups)
        }
        for label in hubLabels.labels {
            let size = totals[label] ?? (0, 0)
            Gauge(label: MetricName.hubConnections, dimensions: [("hub", label)]).record(size.connections)
            Gauge(label: MetricName.hubGroups, dimensions: [("hub", label)]).record(size.groups)
        }
    }

    /// Runs `work` in the hub's background task group.
    func spawn(_ work: @escaping @Sendable () async -> Void) {
        background.continuation.yield(work)
    }

    func newConnectionId() -> String {
        let n = nextConnection.wrappingAdd(1, ordering: .relaxed).newValue
        return UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(22) + String(n, radix: 36)
    }

    // MARK: HTTP

    func errorResponse(_ status: Int, _ code: String, _ message: String, headers extra: HTTPFields = [:]) -> Response {
        let body = JSONValue.object([("error", .object([("code", .string(code)), ("message", .string(message))]))]).serialized
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        headers[HTTPField.Name("x-ms-error-code")!] = code
        headers.append(contentsOf: extra)
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    func negotiate(_ query: Query) -> Response {
        guard let hub = query.first("hub"), WebPubSubNames.hubProblem(hub) == nil else {
            return errorResponse(400, "InvalidRequest", "negotiate needs ?hub=NAME (a valid hub name)")
        }
        // Development only: a token that may join and send to one group, nothing wider.
        let group = query.first("group")
        if let group, let problem = WebPubSubNames.groupProblem(group) { return errorResponse(400, "InvalidRequest", problem) }
        if let user = query.first("userId"), let problem = WebPubSubNames.userProblem(user) { return errorResponse(400, "InvalidRequest", problem) }
        let roles = group.map { ["webpubsub.joinLeaveGroup.\($0)", "webpubsub.sendToGroup.\($0)"] } ?? []
        let port = listening.current ?? configuration.port
        do {
            let access = try ClientAccess.make(
                endpoint: "http://\(configuration.host):\(port)", hub: hub, key: configuration.accessKeys[0], userId: query.first("userId"),
                roles: roles, groups: [], expiresIn: .seconds(3600))
            let body = JSONValue.object([("url", .string(access.url)), ("baseUrl", .string(access.baseURL)), ("token", .string(access.token))])
                .serialized
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        } catch {
            return errorResponse(400, "InvalidRequest", "\(error)")
        }
    }

    // MARK: Ending connections

    /// Ends a connection: tells the client why (JSON protocols), closes the socket (1008, so a
    /// reliable client does not try to recover), forgets it, and sends `disconnected` upstream.
    /// Ends a connection: a `disconnected` frame when `notify` (JSON protocols), then a close
    /// with `code`, by default 1008 for reliable protocols (the session cannot be recovered) and
    /// 1000 for the others, as the service does.
    func terminate(_ c: ClientConnection, reason: String, notify: Bool, code: UInt16? = nil) async {
        var frames: [SocketFrame] = []
        if notify, let codec = c.proto.codec { frames.append(codec.encode(.disconnected(reason: reason))) }
        frames.append(.close(code: code ?? (c.proto.isReliable ? 1008 : 1000), reason: closeReason(reason)))
        c.end(closing: frames)
        guard registry.remove(c.id) else { return }
        logger.debug("connection closed", metadata: [LogKey.hub: "\(c.hub)", LogKey.connection: "\(c.id)", LogKey.reason: "\(reason)"])
        if let handler = handler(for: c.hub, system: "disconnected") {
            let event = UpstreamEvent(
                kind: .disconnected, hub: c.hub, connectionId: c.id, userId: c.userId, subprotocol: c.subprotocolHeader,
                connectionState: c.connectionState, body: Array(JSONValue.object([("reason", .string(reason))]).serialized.utf8),
                contentType: "application/json; charset=utf-8")
            spawn { [upstream, logger] in
                do {
                    _ = try await upstream.call(handler, event)
                } catch {
                    logger.warning("disconnected event failed", metadata: [LogKey.error: "\(error)"])
                }
            }
        }
    }

    func handler(for hub: String, system event: String) -> EventHandlerSettings? {
        configuration.eventHandlers[hub]?.first { $0.systemEvents.contains(event) }
    }

    func handler(for hub: String, userEvent event: String) -> EventHandlerSettings? {
        configuration.eventHandlers[hub]?.first { $0.handles(userEvent: event) }
    }

    func rememberRejection(_ channel: any Channel, status: Int, message: String) {
        let id = ObjectIdentifier(channel)
        rejectionStore.put(id, (status, message))
        channel.closeFuture.whenComplete { [rejectionStore] _ in _ = rejectionStore.take(id) }
    }

    /// nil when the request may go on; else how long until the rate limit takes another.
    func checkRate() -> Duration? { limiter?.take() }
}

/// Why the hub refused a channel's WebSocket upgrade, until the answer is written.
final class RejectionStore: Sendable {
    private let entries = Mutex<[ObjectIdentifier: (status: Int, message: String)]>([:])

    func put(_ id: ObjectIdentifier, _ rejection: (status: Int, message: String)) {
        entries.withLock { $0[id] = rejection }
    }

    func take(_ id: ObjectIdentifier) -> (status: Int, message: String)? {
        entries.withLock { $0.removeValue(forKey: id) }
    }
}

/// A request context that remembers its channel, so that a refused WebSocket upgrade (which
/// falls through to the HTTP responder on the same channel) can be answered with its reason.
struct HubRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel
    /// An `/api` request's body, read by ``RESTGate`` once the token was checked.
    var body: [UInt8] = []
    /// Set by ``HubScopeMiddleware`` for `/api/hubs/{hub}/...` routes.
    var hubScope = HubScope()

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// A token bucket: `perSecond` requests a second, bursts up to the same.
final class RateLimiter: Sendable {
    let perSecond: Int
    private let state: Mutex<(tokens: Double, last: ContinuousClock.Instant)>

    init(perSecond: Int) {
        self.perSecond = max(1, perSecond)
        state = Mutex((Double(max(1, perSecond)), .now))
    }

    /// Takes a token; when there is none, returns how long until there is one.
    func take() -> Duration? {
        state.withLock { s in
            let now = ContinuousClock.now
            let elapsed = now - s.last
            s.tokens = min(Double(perSecond), s.tokens + elapsed / .seconds(1) * Double(perSecond))
            s.last = now
            guard s.tokens >= 1 else { return .seconds((1 - s.tokens) / Double(perSecond)) }
            s.tokens -= 1
            return nil
        }
    }
}

/// A close frame's reason: at most 123 bytes of UTF-8 (a control frame carries 125, two of them
/// the code), cut between characters.
func closeReason(_ reason: String) -> String {
    var out = String.UnicodeScalarView()
    var bytes = 0
    for scalar in reason.unicodeScalars {
        let size = UTF8.width(scalar)
        if bytes + size > 123 { break }
        bytes += size
        out.append(scalar)
    }
    return String(out)
}

/// The `hub` label of the hub's metrics: the first 100 hubs seen get a series each, later ones
/// share `_other`, so that hub names strangers invent (anonymous clients, `/negotiate`) cannot
/// grow the metrics without bound.
final class HubMetricLabels: Sendable {
    static let other = "_other"
    let limit: Int
    private let seen = Mutex<Set<String>>([])

    init(limit: Int = 100) { self.limit = limit }

    func label(_ hub: String) -> String {
        seen.withLock { seen in
            if seen.contains(hub) { return hub }
            if seen.count < limit {
                seen.insert(hub)
                return hub
            }
            seen.insert(Self.other)
            return Self.other
        }
    }

    /// Every label handed out so far.
    var labels: Set<String> { seen.withLock { $0 } }
}
