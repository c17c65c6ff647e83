public import BridgeCore
import BridgeJSON
import Foundation
import HTTPTypes
import HummingbirdWSClient
public import Logging
import NIOCore
import NIOWebSocket
import Synchronization
public import WebPubSub

/// `type: webpubsub`: listens to groups of a hub as a client, so that what browsers send to a
/// group with `sendToGroup` (which never reaches an event handler) can be mirrored into sinks
/// (`events:` rules naming `group:NAME`) and forwarded by routes.
///
/// The listener speaks `json.reliable.webpubsub.azure.v1`: it confirms what it handed on with
/// `sequenceAck`, recovers a dropped socket with the reconnection token (the service resends
/// what was not confirmed; resent frames already handed on are skipped by sequence id), and
/// starts a new connection when the session cannot be recovered (close code 1008, or no
/// recovery within `recoveryTimeout`). Its token carries the groups in `webpubsub.group`, so a
/// new connection is in the groups from its first frame. Group messages sent while no session
/// existed are lost (the service keeps nothing for a connection that is gone): each such gap is
/// logged and counted. Messages without `fromUserId` (sent by servers, this bridge included) are
/// skipped unless `includeServerMessages` is set.
public final class GroupListenerSource: SourceAdapter, HealthReporting {
    public struct Settings: Sendable {
        public var hub: String
        public var groups: [String]
        /// The listener's user id (the token's `sub`).
        public var userId = "wps-bridge"
        public var includeServerMessages = false
        /// Its own connection; nil: the bridge's `webpubsub` connection (see ``use(connection:)``).
        public var connectionString: ConnectionString?
        /// How long a dropped socket is tried to be recovered before a new connection is made.
        public var recoveryTimeout: Duration = .seconds(30)
        public var connectTimeout: Duration = .seconds(10)
        public var tokenLifetime: Duration = .seconds(3600)
        public var maxFrameSize = 4 * 1024 * 1024

        public init(hub: String, groups: [String]) {
            self.hub = hub
            self.groups = groups
        }
    }

    public final class Counters: Sendable {
        /// Group messages handed on.
        public let received = Atomic<Int>(0)
        /// Messages skipped: without a sender, of other groups, or from the server.
        public let skipped = Atomic<Int>(0)
        /// Frames resent after a recovery that had been handed on already.
        public let duplicates = Atomic<Int>(0)
        /// Dropped sockets whose session was recovered.
        public let recoveries = Atomic<Int>(0)
        /// New connections after a session was lost: messages sent meanwhile are gone.
        public let gaps = Atomic<Int>(0)
        /// Deliveries that ended unsettled (shutdown before they were sent).
        public let unsettled = Atomic<Int>(0)
    }

    public let name: String
    public let settings: Settings
    public let counters = Counters()
    let logger: Logger
    private let provider = Mutex<(@Sendable () async throws -> ConnectionString)?>(nil)
    private let problem = Mutex<String?>("not connected yet")

    public init(name: String, settings: Settings, logger: Logger) {
        self.name = name
        self.settings = settings
        self.logger = logger
    }

    public static let subprotocol = "json.reliable.webpubsub.azure.v1"

    /// Whether the listener takes its connection from the bridge's `webpubsub` settings.
    public var usesBridgeConnection: Bool { settings.connectionString == nil }

    /// Where to connect when the source has no connection string of its own: called once per
    /// new connection (the embedded hub's port is known only once it listens).
    public func use(connection: @escaping @Sendable () async throws -> ConnectionString) {
        provider.withLock { $0 = connection }
    }

    public var healthProblem: String? { problem.withLock { $0 } }

    private var metadata: Logger.Metadata { ["wps.source": "\(name)", "wps.hub": "\(settings.hub)"] }

    public func run(emit: DeliveryEmitter) async throws {
        var session: ReliableSession?
        var droppedAt: ContinuousClock.Instant?
        var backoff = Duration.seconds(1)
        var lastLogged: ContinuousClock.Instant?
        while !Task.isCancelled {
            let current: ReliableSession
            let url: String
            if let session, let recovery = session.recoveryURL {
                current = session
                url = recovery
            } else {
                do {
                    let cs = try await connectionString()
                    let access = try ClientAccess.make(
                        endpoint: cs.endpoint, hub: settings.hub, key: cs.accessKey, userId: settings.userId, roles: [], groups: settings.groups,
                        expiresIn: settings.tokenLifetime)
                    url = access.url
                } catch is CancellationError {
                    return
                } catch {
                    throw ListenerError("source \(name): \(error)")
                }
                current = ReliableSession(url: url)
            }
            let recovering = current === session
            let end = await connectOnce(url: url, session: current, recovering: recovering, emit: emit)
            switch end {
            case .cancelled:
                return
            case .sessionEnded(let reason):
                if current.isEstablished {
                    counters.gaps.add(1, ordering: .relaxed)
                    logger.warning(
                        "listener's session ended (\(reason)); starting a new connection: group messages sent until it is up are lost",
                        metadata: metadata.merging(["wps.gaps": "\(counters.gaps.load(ordering: .relaxed))"]) { $1 })
                    backoff = .seconds(1)
                } else {
                    note(problem: "the hub ended the connection: \(reason)", lastLogged: &lastLogged)
                }
                session = nil
                droppedAt = nil
                problem.withLock { $0 = "reconnecting: \(reason)" }
                if !(await pause(current.isEstablished ? .milliseconds(100) : backoff)) { return }
                if !current.isEstablished { backoff = min(backoff * 2, .seconds(10)) }
            case .dropped(let reason, let wasOpen):
                problem.withLock { $0 = "disconnected: \(reason)" }
                if current.isEstablished {
                    if wasOpen { droppedAt = .now }
                    let since = droppedAt ?? .now
                    droppedAt = since
                    if ContinuousClock.now - since >= settings.recoveryTimeout {
                        counters.gaps.add(1, ordering: .relaxed)
                        logger.warning(
                            "listener's session could not be recovered within \(settings.recoveryTimeout) (\(reason)); starting a new connection: group messages sent meanwhile are lost",
                            metadata: metadata)
                        session = nil
                        droppedAt = nil
                    } else {
                        if wasOpen { logger.info("listener's socket dropped (\(reason)); recovering the session", metadata: metadata) }
                        session = current
                    }
                    // At once after the drop, then every second (as the SDKs do).
                    if !(await pause(wasOpen ? .milliseconds(100) : .seconds(1))) { return }
                } else {
                    note(problem: "cannot connect: \(reason)", lastLogged: &lastLogged)
                    if !(await pause(backoff)) { return }
                    backoff = min(backoff * 2, .seconds(10))
                }
            case .failed(let error):
                throw error
            }
        }
    }

    private func note(problem text: String, lastLogged: inout ContinuousClock.Instant?) {
        problem.withLock { $0 = text }
        if lastLogged.map({ ContinuousClock.now - $0 >= .seconds(30) }) ?? true {
            lastLogged = .now
            logger.error("listener \(text); retrying", metadata: metadata)
        }
    }

    /// Sleeps; false when cancelled.
    private func pause(_ duration: Duration) async -> Bool {
        do {
            try await Task.sleep(for: duration)
            return true
        } catch {
            return false
        }
    }

    private func connectionString() async throws -> ConnectionString {
        if let own = settings.connectionString { return own }
        guard let provider = provider.withLock({ $0 }) else {
            throw ListenerError("no Web PubSub connection: give the source a connectionString, or the bridge a webpubsub connection")
        }
        return try await provider()
    }

    /// What the socket handler tells `connectOnce`.
    final class SocketState: Sendable {
        let opened = Atomic<Bool>(false)
        let ended = Mutex<End?>(nil)
    }

    enum End: Sendable {
        case cancelled
        /// The service ended the session (close code 1008, or it refused a recovery).
        case sessionEnded(String)
        /// The socket broke, the handshake failed, or the service closed without ending the
        /// session. `wasOpen`: the socket had been up.
        case dropped(String, wasOpen: Bool)
        /// Handing a message on failed for good.
        case failed(any Error)
    }

    /// Thrown out of the socket handler to end it.
    struct Stop: Error {
        let end: End
    }

    /// One socket: from the handshake until it closes.
    private func connectOnce(url: String, session: ReliableSession, recovering: Bool, emit: DeliveryEmitter) async -> End {
        var headers = HTTPFields()
        headers[.secWebSocketProtocol] = Self.subprotocol
        let configuration = WebSocketClientConfiguration(
            maxFrameSize: settings.maxFrameSize, additionalHeaders: headers, autoPing: .enabled(timePeriod: .seconds(20)))
        let socket = SocketState()
        var wsLogger = logger
        wsLogger[metadataKey: "wps.source"] = "\(name)"
        let connectTimeout = settings.connectTimeout
        let loggerForSocket = wsLogger
        do {
            let close = try await withThrowingTaskGroup(of: WebSocketCloseFrame?.self) { group in
                group.addTask {
                    try await WebSocketClient.connect(url: url, configuration: configuration, logger: loggerForSocket) { inbound, outbound, _ in
                        socket.opened.store(true, ordering: .relaxed)
                        do {
                            try await self.serve(inbound: inbound, outbound: outbound, session: session, recovering: recovering, emit: emit)
                        } catch let stop as Stop {
                            socket.ended.withLock { $0 = stop.end }
                            throw stop
                        }
                    }
                }
                group.addTask {
                    // A handshake that never completes (a server that accepts and says nothing).
                    try await Task.sleep(for: connectTimeout)
                    if !socket.opened.load(ordering: .relaxed) { throw ListenerError("no WebSocket handshake within \(connectTimeout)") }
                    while true { try await Task.sleep(for: .seconds(3600)) }
                }
                defer { group.cancelAll() }
                return try await group.next() ?? nil
            }
            if let end = socket.ended.withLock({ $0 }) { return end }
            if Task.isCancelled { return .cancelled }
            if let close, UInt16(webSocketErrorCode: close.closeCode) == 1008 {
                return .sessionEnded(close.reason.map { "1008: \($0)" } ?? "1008")
            }
            return .dropped((close == nil ? "the connection ended without a close frame" : "closed by the hub") + (close.map { " (\(UInt16(webSocketErrorCode: $0.closeCode))\($0.reason.map { ": \($0)" } ?? ""))" } ?? ""), wasOpen: socket.opened.load(ordering: .relaxed))
        } catch {
            if let end = socket.ended.withLock({ $0 }) { return end }
            if Task.isCancelled { return .cancelled }
            return .dropped("\(error)", wasOpen: socket.opened.load(ordering: .relaxed))
        }
    }

    /// Reads frames and hands group messages on; confirms what was handed on every 200 ms (and
    /// at once when 500 are unconfirmed, well below the service's buffer of 1000).
    private func serve(
        inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, session: ReliableSession, recovering: Bool, emit: DeliveryEmitter
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // The acknowledger: ends when the reader does.
                while true {
                    try await Task.sleep(for: .milliseconds(200))
                    try await Self.acknowledge(session, outbound)
                }
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: self.settings.maxFrameSize) {
                    guard case .text(let text) = message else {
                        self.logger.warning("listener got a binary frame on a JSON subprotocol; ignored", metadata: self.metadata)
                        continue
                    }
                    try await self.handle(ServiceFrame.parse(text), session: session, recovering: recovering, emit: emit)
                    if session.unacknowledged >= 500 { try await Self.acknowledge(session, outbound) }
                }
            }
            defer { group.cancelAll() }
            // The reader ending (socket closed) ends the acknowledger too.
            try await group.next()
        }
    }

    /// Sends `sequenceAck` with the highest id handed on, when it is new.
    private static func acknowledge(_ session: ReliableSession, _ outbound: WebSocketOutboundWriter) async throws {
        if let id = session.takeAck() {
            try await outbound.write(.text(#"{"type":"sequenceAck","sequenceId":\#(id)}"#))
        }
    }

    private func handle(_ frame: ServiceFrame, session: ReliableSession, recovering: Bool, emit: DeliveryEmitter) async throws {
        switch frame {
        case .connected(let connectionId, let userId, let token):
            guard session.connected(connectionId: connectionId, reconnectionToken: token) else {
                throw Stop(end: .sessionEnded("the hub answered the recovery with another connection"))
            }
            problem.withLock { $0 = nil }
            if recovering {
                counters.recoveries.add(1, ordering: .relaxed)
                logger.info("listener's session recovered", metadata: metadata.merging(["wps.connection": "\(connectionId)"]) { $1 })
            } else {
                logger.info(
                    "listener connected",
                    metadata: metadata.merging(["wps.connection": "\(connectionId)", "wps.user": "\(userId ?? "-")", "wps.groups": "\(settings.groups)"]) { $1 })
            }
        case .disconnected(let message):
            logger.info("hub is disconnecting the listener: \(message)", metadata: metadata)
        case .serverMessage(let sequenceId):
            counters.skipped.add(1, ordering: .relaxed)
            if let sequenceId { session.handedOn(sequenceId) }
        case .groupMessage(let group, let fromUserId, let dataType, let data, let sequenceId):
            if let sequenceId {
                switch session.arrival(sequenceId) {
                case .duplicate:
                    counters.duplicates.add(1, ordering: .relaxed)
                    return
                case .gap(let missing):
                    logger.warning("listener: \(missing) messages never arrived (sequence ids skipped)", metadata: metadata)
                case .new:
                    break
                }
            }
            defer { if let sequenceId { session.handedOn(sequenceId) } }
            guard settings.groups.contains(group), fromUserId != nil || settings.includeServerMessages else {
                counters.skipped.add(1, ordering: .relaxed)
                return
            }
            counters.received.add(1, ordering: .relaxed)
            let delivery = makeDelivery(group: group, fromUserId: fromUserId, dataType: dataType, data: data, sequenceId: sequenceId, session: session)
            do {
                try await emit.emit(delivery)
            } catch {
                throw Stop(end: error is CancellationError ? .cancelled : .failed(error))
            }
        case .other:
            break
        case .malformed(let text):
            logger.warning("listener got a frame it cannot read; ignored", metadata: metadata.merging(["wps.frame": "\(text)"]) { $1 })
        }
    }

    private func makeDelivery(
        group: String, fromUserId: String?, dataType: String, data: [UInt8]?, sequenceId: UInt64?, session: ReliableSession
    ) -> Delivery {
        let type = DataType(rawValue: dataType) ?? .binary
        var headers = [
            "hub": settings.hub, "group": group, "event": "group:\(group)", "wps-mirrored-from": settings.hub.lowercased(),
        ]
        if let fromUserId { headers["userId"] = fromUserId }
        let position = sequenceId.map { "\(session.connectionId ?? "?")/\($0)" }
        let message = Message(
            payload: ByteBuffer(bytes: data ?? []), dataType: type, key: fromUserId, headers: headers,
            origin: Origin(source: name, position: position))
        let rejection = data == nil ? "binary data that is not base64" : nil
        return Delivery(message: message, rejection: rejection) { [logger, counters, metadata] outcome in
            if case .failed(let reason) = outcome {
                counters.unsettled.add(1, ordering: .relaxed)
                logger.warning("group message not delivered", metadata: metadata.merging(["wps.group": "\(group)", "reason": "\(reason)"]) { $1 })
            }
        }
    }
}

struct ListenerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `type: webpubsub` sources.
public struct GroupListenerSourceFactory: SourceFactory {
    public init() {}
    public var typeName: String { "webpubsub" }
    public var summary: String { "messages clients send to groups of a hub, as a listening client (hub, groups, userId)" }
    public var originFields: Set<String> { [] }

    public func makeSource(name: String, settings m: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        m.checkKeys(
            ["hub", "groups", "userId", "includeServerMessages", "connectionString", "connectionStringFile", "recoveryTimeout", "connectTimeout"],
            what: "a webpubsub source")
        let hub = m.nonEmptyString("hub", required: true)
        if let hub, let problem = WebPubSubNames.hubProblem(hub) { m.value("hub")?.report(problem) }
        let groups = m.stringList("groups") ?? []
        if !m.has("groups") {
            m.report("missing required key 'groups': the groups to listen to")
        } else if groups.isEmpty {
            m.value("groups")?.report("at least one group is needed")
        }
        for group in groups {
            if let problem = WebPubSubNames.groupProblem(group) { m.value("groups")?.report(problem) }
        }
        if Set(groups).count != groups.count { m.value("groups")?.report("a group is listed twice") }
        guard let hub, !groups.isEmpty else { return nil }
        var settings = GroupListenerSource.Settings(hub: hub, groups: groups)
        settings.userId = m.nonEmptyString("userId") ?? settings.userId
        settings.includeServerMessages = m.bool("includeServerMessages") ?? false
        settings.recoveryTimeout = m.duration("recoveryTimeout") ?? settings.recoveryTimeout
        settings.connectTimeout = m.duration("connectTimeout") ?? settings.connectTimeout
        if let text = m.secret("connectionString") {
            do {
                settings.connectionString = try ConnectionString(parsing: text)
            } catch {
                (m.value("connectionString") ?? m.value("connectionStringFile"))?.report("invalid connection string: \(error.message)")
            }
        }
        return GroupListenerSource(name: name, settings: settings, logger: context.logger)
    }
}
