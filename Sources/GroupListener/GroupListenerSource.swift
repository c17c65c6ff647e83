import BridgeConfig
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
    let health: ConnectionHealth
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

    var metadata: Logger.Metadata { [LogKey.source: "\(name)", LogKey.hub: "\(settings.hub)"] }

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
    func gap(_ reason: String) {
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

    func noteFullInbox() {
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

    func makeDelivery(
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
