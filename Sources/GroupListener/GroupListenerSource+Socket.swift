import BridgeConfig
import BridgeCore
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket
import Synchronization
import WebPubSub
import WebPubSubProtocol

/// One socket of the listener: the connect race, the frames it reads, and what they become.
extension GroupListenerSource {
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
    func connectOnce(url: String, session: ReliableSession, recovering: Bool, inbox: Inbox) async -> (End, confirmed: Bool) {
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
    func serve(
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
    static func acknowledge(_ session: ReliableSession, _ outbound: WebSocketOutboundWriter) async {
        guard let id = session.pendingAck else { return }
        do {
            try await outbound.write(.text(#"{"type":"sequenceAck","sequenceId":\#(id)}"#))
            session.acknowledged(id)
        } catch {}
    }

    /// The first sign that a recovered socket works (its `connected` frame, or data).
    func confirm(_ socket: SocketState, recovering: Bool, connectionId: String?) {
        guard socket.confirmed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        health.recovered("listener connected", metadata: metadata)
        if recovering {
            counters.recoveries.add(1, ordering: .relaxed)
            counters.reconnectsMetric.increment()
            logger.info("listener's session recovered", metadata: metadata.merging([LogKey.connection: "\(connectionId ?? "-")"]) { $1 })
        }
    }

    func handle(_ frame: ServiceFrame, session: ReliableSession, recovering: Bool, inbox: Inbox, socket: SocketState) async throws {
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
}
