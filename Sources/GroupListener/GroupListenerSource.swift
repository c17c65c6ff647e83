package import BridgeConfig
package import BridgeCore
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import HTTPTypes
import HummingbirdWSClient
package import Logging
import NIOCore
import NIOWebSocket
package import Synchronization
package import WebPubSub
import WebPubSubProtocol

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
package final class GroupListenerSource: GroupListening, WebPubSubClientAdapter, HealthReporting {
    package struct Settings: Sendable {
        package var hub: String
        package var groups: [String]
        /// The listener's user id (the token's `sub`).
        package var userId = "wps-bridge"
        package var includeServerMessages = false
        /// Its own connection; nil: the bridge's `webpubsub` connection (see ``use(connection:)``).
        package var connectionString: ConnectionString?
        /// How long a dropped socket is tried to be recovered before a new connection is made.
        package var recoveryTimeout: Duration = .seconds(30)
        /// How long the WebSocket handshake may take.
        package var connectTimeout: Duration = .seconds(10)
        package var tokenLifetime: Duration = .seconds(3600)
        package var maxFrameSize = 4 * 1024 * 1024
        /// Messages received and not yet handed on; when full, the socket stops reading.
        package var bufferSize = 1000

        package init(hub: String, groups: [String]) {
            self.hub = hub
            self.groups = groups
        }
    }

    package final class Counters: Sendable {
        /// Group messages received for handing on.
        package let received = Atomic<Int>(0)
        /// Messages skipped: without a sender, of other groups, or from the server.
        package let skipped = Atomic<Int>(0)
        /// Frames resent after a recovery that had been received already.
        package let duplicates = Atomic<Int>(0)
        /// Dropped sockets whose session was recovered.
        package let recoveries = Atomic<Int>(0)
        /// Sessions lost (a new connection followed): messages sent meanwhile are gone.
        package let gaps = Atomic<Int>(0)
        /// Received messages not handed on (shutdown) or not delivered.
        package let unsettled = Atomic<Int>(0)
        let reconnectsMetric: CoreMetrics.Counter
        let gapsMetric: CoreMetrics.Counter

        init(source: String) {
            reconnectsMetric = CoreMetrics.Counter(label: MetricName.sourceReconnects, dimensions: [("source", source)])
            gapsMetric = CoreMetrics.Counter(label: MetricName.sourceGaps, dimensions: [("source", source)])
        }
    }

    package let name: String
    package let settings: Settings
    package let counters: Counters
    let logger: Logger
    private let provider = Mutex<ClientAccessIssuer?>(nil)
    private let health: ConnectionHealth
    private let bufferFullLogged = Mutex<ContinuousClock.Instant?>(nil)

    package init(name: String, settings: Settings, logger: Logger) {
        self.name = name
        self.settings = settings
        self.logger = logger
        self.counters = Counters(source: name)
        health = ConnectionHealth(logger: logger, initialProblem: "not connected yet")
    }

    package static let subprotocol = "json.reliable.webpubsub.azure.v1"

    package var listenedHub: String { settings.hub }
    package var listenedGroups: [String] { settings.groups }
    package var listenerUserId: String { settings.userId }

    /// Whether the listener takes its connection from the bridge's `webpubsub` settings.
    package var usesBridgeConnection: Bool { settings.connectionString == nil }

    /// Where to connect when the source has no connection string of its own: asked once per
    /// new connection (the embedded hub's port is known only once it listens; with Entra ID the
    /// service issues the token).
    package func use(connection: ClientAccessIssuer) {
        provider.withLock { $0 = connection }
    }

    package var healthProblem: String? { health.problem }

    private var metadata: Logger.Metadata { [LogKey.source: "\(name)", LogKey.hub: "\(settings.hub)"] }

    /// Listens until cancelled. The sockets put what they receive into a bounded inbox and go
    /// on reading (answering pings) while one task hands the messages on, at the pace the
    /// sinks and routes take them.
    package func run(emit: DeliveryEmitter) async throws {
        let inbox = Inbox(capacity: settings.bufferSize)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await self.listen(into: inbox) }
                group.addTask {
                    while true { try await emit.emit(try await inbox.take()) }
                }
                defer { group.cancelAll() }
                // `listen` returns only when cancelled, the hand-on task only by throwing.
                try await group.next()
            }
        } catch is CancellationError {
        }
        let left = inbox.removeAll()
        for delivery in left { delivery.nack("the bridge stopped before it was handed on") }
        if !left.isEmpty {
            logger.warning(
                "listener stopped with received messages not handed on", metadata: metadata.merging([LogKey.count: "\(left.count)"]) { $1 })
        }
    }

    /// Connects, recovers and reconnects until cancelled.
    private func listen(into inbox: Inbox) async throws {
        var session: ReliableSession?
        var droppedAt: ContinuousClock.Instant?
        var backoff = Backoff(initial: .seconds(1), maximum: .seconds(10))
        while !Task.isCancelled {
            let current: ReliableSession
            let url: String
            let recovering: Bool
            if let session, let recovery = session.recoveryURL {
                current = session
                url = recovery
                recovering = true
            } else {
                if let session, session.isEstablished { gap("the session has no reconnection token") }
                session = nil
                do {
                    url = try await issuer()(hub: settings.hub, userId: settings.userId, groups: settings.groups, expiresIn: settings.tokenLifetime)
                        .url
                } catch is CancellationError {
                    return
                } catch {
                    throw ListenerError("source \(name): \(error)")
                }
                current = ReliableSession(url: url)
                recovering = false
            }
            let started = ContinuousClock.now
            let (end, confirmed) = await connectOnce(url: url, session: current, recovering: recovering, inbox: inbox)
            switch end {
            case .cancelled:
                return
            case .sessionEnded(let reason):
                session = nil
                droppedAt = nil
                health.note("reconnecting: \(reason)")
                if current.isEstablished {
                    gap(reason)
                    // A session that ends as soon as it began (closed again and again) backs off.
                    let lasted = ContinuousClock.now - started >= .seconds(5)
                    if lasted { backoff.reset() }
                    let wait = backoff.next()
                    if !(await pause(lasted ? .milliseconds(100) : wait)) { return }
                } else {
                    note(problem: "the hub ended the connection: \(reason)")
                    if !(await pause(backoff.next())) { return }
                }
            case .dropped(let reason):
                health.note("disconnected: \(reason)")
                guard current.isEstablished else {
                    note(problem: "cannot connect: \(reason)")
                    if !(await pause(backoff.next())) { return }
                    continue
                }
                // The recovery window starts when a working socket drops, not at each failed attempt.
                if confirmed || droppedAt == nil { droppedAt = .now }
                if confirmed { backoff.reset() }
                if let since = droppedAt, ContinuousClock.now - since >= settings.recoveryTimeout {
                    gap("no recovery within \(settings.recoveryTimeout): \(reason)")
                    session = nil
                    droppedAt = nil
                } else {
                    if confirmed {
                        logger.info(
                            "listener's socket dropped; recovering the session", metadata: metadata.merging([LogKey.reason: "\(reason)"]) { $1 })
                    }
                    session = current
                }
                // At once after a working socket dropped, then every second (as the SDKs do).
                if !(await pause(confirmed ? .milliseconds(100) : .seconds(1))) { return }
            }
        }
    }

    /// A session is gone: what was sent to the groups until the next one is lost.
    private func gap(_ reason: String) {
        counters.gaps.add(1, ordering: .relaxed)
        counters.gapsMetric.increment()
        logger.warning(
            "listener's session ended; starting a new connection: group messages sent until it is up are lost",
            metadata: metadata.merging([LogKey.reason: "\(reason)", LogKey.gaps: "\(counters.gaps.load(ordering: .relaxed))"]) { $1 })
    }

    /// A connection attempt failed: for `/readyz`, and a log line at most every 30 s.
    private func note(problem text: String) {
        health.failed(text, "listener cannot connect; retrying", metadata: metadata)
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

    private func issuer() throws -> ClientAccessIssuer {
        if let own = settings.connectionString { return .signing(own) }
        guard let provider = provider.withLock({ $0 }) else {
            throw ListenerError("no Web PubSub connection: give the source a connectionString, or the bridge a webpubsub connection")
        }
        return provider
    }

    enum End: Sendable {
        case cancelled
        /// The service ended the session (close code 1008).
        case sessionEnded(String)
        /// The socket broke, the handshake failed or timed out, or the service closed without
        /// ending the session.
        case dropped(String)
    }

    /// What one socket's tasks share.
    final class SocketState: Sendable {
        let opened = Atomic<Bool>(false)
        /// A `connected` frame or a data frame arrived: the session works on this socket.
        let confirmed = Atomic<Bool>(false)
    }

    /// How a connect attempt ended: whichever comes first.
    final class Race: Sendable {
        enum Outcome: Sendable {
            case closed(WebSocketCloseFrame?)
            case failed(any Error)
            case timedOut
            case cancelled
        }

        private let state = Mutex<(outcome: Outcome?, waiter: CheckedContinuation<Outcome, Never>?)>((nil, nil))

        func finish(_ outcome: Outcome) {
            state.withLock { s -> CheckedContinuation<Outcome, Never>? in
                guard s.outcome == nil else { return nil }
                s.outcome = outcome
                defer { s.waiter = nil }
                return s.waiter
            }?.resume(returning: outcome)
        }

        func wait() async -> Outcome {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { s -> Outcome? in
                    if let outcome = s.outcome { return outcome }
                    s.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        }
    }

    /// One socket, from the handshake until it closes. The client library waits for the
    /// handshake without heeding cancellation, so the socket runs in a task of its own that is
    /// abandoned (cancelled, not awaited) on a handshake timeout or shutdown.
    private func connectOnce(url: String, session: ReliableSession, recovering: Bool, inbox: Inbox) async -> (End, confirmed: Bool) {
        var headers = HTTPFields()
        headers[.secWebSocketProtocol] = Self.subprotocol
        let configuration = WebSocketClientConfiguration(
            maxFrameSize: settings.maxFrameSize, additionalHeaders: headers, autoPing: .enabled(timePeriod: .seconds(20)))
        let socket = SocketState()
        let race = Race()
        var socketLogger = logger
        socketLogger[metadataKey: LogKey.source] = "\(name)"
        let connect = Task { [socketLogger] in
            do {
                let close = try await WebSocketClient.connect(url: url, configuration: configuration, logger: socketLogger) { inbound, outbound, _ in
                    socket.opened.store(true, ordering: .relaxed)
                    session.socketOpened()
                    try await self.serve(inbound: inbound, outbound: outbound, session: session, recovering: recovering, inbox: inbox, socket: socket)
                }
                race.finish(.closed(close))
            } catch {
                race.finish(.failed(error))
            }
        }
        let connectTimeout = settings.connectTimeout
        let timer = Task {
            try? await Task.sleep(for: connectTimeout)
            if !socket.opened.load(ordering: .relaxed) { race.finish(.timedOut) }
        }
        let outcome = await withTaskCancellationHandler {
            await race.wait()
        } onCancel: {
            race.finish(.cancelled)
        }
        timer.cancel()
        let confirmed = socket.confirmed.load(ordering: .relaxed)
        switch outcome {
        case .cancelled:
            connect.cancel()
            return (.cancelled, confirmed)
        case .timedOut:
            connect.cancel()
            return (.dropped("no WebSocket handshake within \(connectTimeout)"), false)
        case .closed(let close):
            if Task.isCancelled { return (.cancelled, confirmed) }
            guard let close else { return (.dropped("the connection ended without a close frame"), confirmed) }
            let code = UInt16(webSocketErrorCode: close.closeCode)
            let text = "\(code)" + (close.reason.map { ": \($0)" } ?? "")
            return (code == 1008 ? .sessionEnded(text) : .dropped("closed by the hub (\(text))"), confirmed)
        case .failed(let error):
            if Task.isCancelled { return (.cancelled, confirmed) }
            return (.dropped("\(error)"), confirmed)
        }
    }

    /// Reads frames into the inbox; confirms what was received every 200 ms (and at once when
    /// 500 are unconfirmed, well below the service's buffer of 1000).
    private func serve(
        inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, session: ReliableSession, recovering: Bool, inbox: Inbox,
        socket: SocketState
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // The acknowledger: ends when the reader does.
                while true {
                    try await Task.sleep(for: .milliseconds(200))
                    await Self.acknowledge(session, outbound)
                }
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: self.settings.maxFrameSize) {
                    guard case .text(let text) = message else {
                        self.logger.warning("listener got a binary frame on a JSON subprotocol; ignored", metadata: self.metadata)
                        continue
                    }
                    try await self.handle(ServiceFrame.parse(text), session: session, recovering: recovering, inbox: inbox, socket: socket)
                    if session.unacknowledged >= 500 { await Self.acknowledge(session, outbound) }
                }
            }
            defer { group.cancelAll() }
            // The reader ending (the socket closed) ends the acknowledger too.
            try await group.next()
        }
    }

    /// Sends `sequenceAck` with the highest id received, when it is new. A failed write is
    /// left to the reader, which sees the socket end.
    private static func acknowledge(_ session: ReliableSession, _ outbound: WebSocketOutboundWriter) async {
        guard let id = session.pendingAck else { return }
        do {
            try await outbound.write(.text(#"{"type":"sequenceAck","sequenceId":\#(id)}"#))
            session.acknowledged(id)
        } catch {}
    }

    /// The first sign that a recovered socket works (its `connected` frame, or data).
    private func confirm(_ socket: SocketState, recovering: Bool, connectionId: String?) {
        guard socket.confirmed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        health.recovered("listener connected", metadata: metadata)
        if recovering {
            counters.recoveries.add(1, ordering: .relaxed)
            counters.reconnectsMetric.increment()
            logger.info("listener's session recovered", metadata: metadata.merging([LogKey.connection: "\(connectionId ?? "-")"]) { $1 })
        }
    }

    private func handle(_ frame: ServiceFrame, session: ReliableSession, recovering: Bool, inbox: Inbox, socket: SocketState) async throws {
        switch frame {
        case .connected(let connectionId, let userId, let token):
            switch session.connected(connectionId: connectionId, reconnectionToken: token) {
            case .started:
                logger.info(
                    "listener connected",
                    metadata: metadata.merging([
                        LogKey.connection: "\(connectionId)", LogKey.user: "\(userId ?? "-")", LogKey.groups: "\(settings.groups)",
                    ]) { $1 })
                if counters.gaps.load(ordering: .relaxed) > 0 { counters.reconnectsMetric.increment() }
            case .same:
                break
            case .replaced:
                // The hub answered the recovery with a new connection (in the groups from the
                // token): go on with it as a new session.
                gap("the hub answered the recovery with a new connection")
            }
            confirm(socket, recovering: recovering, connectionId: connectionId)
        case .disconnected(let message):
            logger.info("hub is disconnecting the listener", metadata: metadata.merging([LogKey.reason: "\(message)"]) { $1 })
        case .serverMessage(let sequenceId):
            confirm(socket, recovering: recovering, connectionId: session.connectionId)
            counters.skipped.add(1, ordering: .relaxed)
            if let sequenceId { session.handedOn(sequenceId) }
        case .malformed(let reason, let sequenceId):
            logger.warning("listener got a frame it cannot read; skipped", metadata: metadata.merging([LogKey.reason: "\(reason)"]) { $1 })
            if let sequenceId { session.handedOn(sequenceId) }
        case .groupMessage(let group, let fromUserId, let dataType, let data, let sequenceId):
            confirm(socket, recovering: recovering, connectionId: session.connectionId)
            if let sequenceId {
                switch session.arrival(sequenceId) {
                case .duplicate:
                    counters.duplicates.add(1, ordering: .relaxed)
                    return
                case .gap(let missing):
                    logger.warning(
                        "listener: messages never arrived (sequence ids skipped)", metadata: metadata.merging([LogKey.count: "\(missing)"]) { $1 })
                case .new:
                    break
                }
            }
            if settings.groups.contains(group), fromUserId != nil || settings.includeServerMessages {
                counters.received.add(1, ordering: .relaxed)
                let delivery = makeDelivery(
                    group: group, fromUserId: fromUserId, dataType: dataType, data: data, sequenceId: sequenceId, session: session)
                if inbox.isFull { noteFullInbox() }
                // Waits while the inbox is full: then the hub keeps what follows.
                try await inbox.put(delivery)
            } else {
                counters.skipped.add(1, ordering: .relaxed)
            }
            if let sequenceId { session.handedOn(sequenceId) }
        case .other:
            break
        }
    }

    private func noteFullInbox() {
        let log = bufferFullLogged.withLock { last in
            guard last.map({ ContinuousClock.now - $0 >= .seconds(30) }) ?? true else { return false }
            last = .now
            return true
        }
        if log {
            logger.warning(
                "listener's buffer is full: sinks or routes are not keeping up; the socket waits, and the hub keeps what follows for a while",
                metadata: metadata.merging([LogKey.limit: "\(settings.bufferSize)"]) { $1 })
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
        return Delivery(message: message, rejection: rejection) { [counters] outcome in
            if case .failed = outcome { counters.unsettled.add(1, ordering: .relaxed) }
        }
    }
}

struct ListenerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `type: webpubsub` sources.
package struct GroupListenerSourceFactory: SourceFactory {
    package init() {}
    package var isAtLeastOnce: Bool { true }
    package var typeName: String { "webpubsub" }
    package var summary: String { "messages clients send to groups of a hub, as a listening client (hub, groups, userId)" }
    package var originFields: Set<String> { [] }

    package func makeSource(name: String, settings m: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        m.checkKeys(
            [
                "hub", "groups", "userId", "includeServerMessages", "connectionString", "connectionStringFile", "recoveryTimeout", "connectTimeout",
                "bufferSize",
            ],
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
        for (key, value) in [("recoveryTimeout", m.duration("recoveryTimeout")), ("connectTimeout", m.duration("connectTimeout"))] {
            guard let value else { continue }
            if value < .seconds(1) { m.value(key)?.report("\(key) must be at least 1s") }
            if key == "recoveryTimeout" { settings.recoveryTimeout = value } else { settings.connectTimeout = value }
        }
        settings.bufferSize = m.int("bufferSize", range: 1...1_000_000) ?? settings.bufferSize
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
