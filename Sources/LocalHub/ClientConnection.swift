import Foundation
import NIOCore
import Synchronization
import WebPubSubProtocol

/// One client connection. For the reliable protocol it outlives its socket: after an unexpected
/// drop the session waits `reconnectGrace` for the client to come back with its reconnection
/// token, keeping what the client has not acknowledged, and replays it on reconnect.
final class ClientConnection: Sendable {
    enum PlainMode: Sendable, Equatable {
        /// Every frame becomes a user event `message`.
        case sendEvent
        /// Every frame is published to the group.
        case sendToGroup(String)
    }

    let id: String
    let hub: String
    let userId: String?
    let proto: ClientProtocol
    let plainMode: PlainMode
    let roles: Set<String>
    /// The wildcard roles (`webpubsub.sendToGroups.{pattern}`), read once.
    let roleGrants: RoleGrants
    let reconnectionToken: String?
    /// Claims, query and headers of the connect request, for upstream events.
    let subprotocolHeader: String?

    /// The unacknowledged messages kept for a reliable connection, at most.
    static let maxUnackedMessages = 1000
    static let maxUnackedBytes = 16 * 1024 * 1024

    /// A message kept for a reliable client until it acknowledges it.
    struct Kept {
        let id: UInt64
        let frame: SocketFrame
        let bytes: Int
        let expiresAt: ContinuousClock.Instant?
    }

    private struct State {
        var socket: ClientSocket?
        var socketGeneration = 0
        var nextSequenceId: UInt64 = 1
        var unacked = CircularBuffer<Kept>()
        var unackedBytes = 0
        var seenAckIds: Set<UInt64> = []
        var ackIdOrder = CircularBuffer<UInt64>()
        var connectionState: String?
        var ended = false
        /// `invoke`s whose answer the client still waits for, each with the token of its start.
        var invocations: [String: UInt64] = [:]
        /// Upstream calls of invocations still running, cancelled or not: what the limit counts.
        var invocationsRunning = 0
        var nextInvocationToken: UInt64 = 0
        /// Those waiting for the connection to end or a socket to attach (``waitWhileAway``).
        var awayWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextAwayWaiter = 0
    }

    private let state = Mutex(State())
    /// The hub's memory for replays, shared by every reliable connection.
    let replayBudget: ReplayBudget

    init(
        id: String, hub: String, userId: String?, proto: ClientProtocol, plainMode: PlainMode, roles: Set<String>,
        subprotocolHeader: String?, connectionState: String?, replayBudget: ReplayBudget = ReplayBudget()
    ) {
        self.replayBudget = replayBudget
        self.id = id
        self.hub = hub
        self.userId = userId
        self.proto = proto
        self.plainMode = plainMode
        self.roles = roles
        self.roleGrants = RoleGrants(roles: roles)
        self.subprotocolHeader = subprotocolHeader
        self.reconnectionToken = proto.isReliable ? UUID().uuidString + UUID().uuidString : nil
        state.withLock { $0.connectionState = connectionState }
    }

    var connectionState: String? {
        get { state.withLock { $0.connectionState } }
        set { state.withLock { $0.connectionState = newValue } }
    }

    var isEnded: Bool { state.withLock { $0.ended } }

    /// Attaches a new socket on `channel`; returns it and its generation. For a reconnect, the
    /// messages not yet acknowledged are queued first, with their original sequence ids, but
    /// those whose TTL passed (`expired` counts them). A socket attached before is closed after
    /// what was queued for it.
    func attach(
        channel: any Channel, greeting: SocketFrame?, onSlow: @escaping @Sendable () -> Void
    ) -> (socket: ClientSocket, generation: Int, expired: Int) {
        let socket = ClientSocket(channel: channel, onSlow: onSlow)
        var expired = 0
        let (previous, generation, ended): (ClientSocket?, Int, Bool) = state.withLock { s in
            let previous = s.socket
            s.socketGeneration += 1
            if s.ended { return (nil, s.socketGeneration, true) }  // a reconnect that lost the race with the end
            s.socket = socket
            Self.wakeAway(&s)
            if let greeting { _ = socket.enqueue(greeting) }
            expired = dropExpired(&s, now: .now)
            for entry in s.unacked { _ = socket.enqueue(entry.frame) }
            return (previous, s.socketGeneration, false)
        }
        previous?.finish()
        if ended { socket.finish() } else { socket.drainSoon() }
        return (socket, generation, expired)
    }

    /// Removes the messages kept for a replay whose TTL passed; returns how many. The client
    /// sees a gap in the sequence ids, which the reliable protocol allows (it acknowledges the highest).
    private func dropExpired(_ s: inout State, now: ContinuousClock.Instant) -> Int {
        guard s.unacked.contains(where: { $0.expiresAt.map { $0 <= now } ?? false }) else { return 0 }
        let before = s.unacked.count
        var kept = CircularBuffer<Kept>()
        var freed = 0
        for entry in s.unacked {
            if let expiry = entry.expiresAt, expiry <= now {
                freed += entry.bytes
            } else {
                kept.append(entry)
            }
        }
        s.unacked = kept
        s.unackedBytes -= freed
        replayBudget.add(-freed)
        return before - kept.count
    }

    /// Detaches the socket of `generation` (if it is still the current one); it closes after
    /// what was queued for it.
    func detach(generation: Int) {
        let socket: ClientSocket? = state.withLock { s in
            guard s.socketGeneration == generation else { return nil }
            defer { s.socket = nil }
            return s.socket
        }
        socket?.finish()
    }

    var hasSocket: Bool { state.withLock { $0.socket != nil } }

    /// Waits, after the socket of `generation` dropped, until the connection ends, a socket
    /// attaches (a reconnect), or `timeout` passes; whichever comes first. No polling: `attach`
    /// and `end` wake it.
    func waitWhileAway(generation: Int, timeout: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: timeout) }
            group.addTask { await self.awayChange(after: generation) }
            await group.next()
            group.cancelAll()
        }
    }

    private func awayChange(after generation: Int) async {
        let key = state.withLock { s -> Int in
            s.nextAwayWaiter += 1
            return s.nextAwayWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.ended || s.socket != nil || s.socketGeneration != generation || Task.isCancelled { return true }
                    s.awayWaiters[key] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.awayWaiters.removeValue(forKey: key) }?.resume()
        }
    }

    private static func wakeAway(_ s: inout State) {
        for waiter in s.awayWaiters.values { waiter.resume() }
        s.awayWaiters.removeAll()
    }

    /// Counts the sockets attached so far.
    var currentGeneration: Int { state.withLock { $0.socketGeneration } }

    /// Sends a frame of its own (acks, system messages).
    @discardableResult
    func sendRaw(_ frame: SocketFrame) -> Bool {
        let socket: ClientSocket? = state.withLock { $0.socket }
        guard let socket else { return false }
        switch socket.enqueue(frame) {
        case .drainNeeded: socket.drainSoon()
        case .queued: break
        case .refused, .full: return false
        }
        return true
    }

    enum DeliverResult { case sent, noSocket, slowClient, bufferFull }

    /// Queues a data message as this connection's protocol renders it; the socket is added to
    /// `drains` when it needs a drain.
    @discardableResult
    func deliver(_ message: Outgoing, drains: inout DrainBatch) -> DeliverResult {
        let frame: SocketFrame
        switch proto {
        case .plain:
            switch message.dataType {
            case .binary: frame = .binaryBytes(message.payloadBytes)
            case .json, .text: frame = .textBytes(message.payloadBytes)
            }
        case .json:
            frame = .textBytes(message.jsonFrameBytes)
        case .protobuf:
            // Rendered per connection: protobuf clients are few, and JSON fan-outs pay nothing for them.
            frame = .binary(ProtobufFrameCodec.message(message, sequenceId: nil))
        case .reliableJSON, .reliableProtobuf:
            return state.withLock { s in
                if s.ended { return .noSocket }
                let id = s.nextSequenceId
                s.nextSequenceId += 1
                let kept: Kept
                if proto == .reliableJSON {
                    let text = message.jsonFrame(sequenceId: id)
                    kept = Kept(id: id, frame: .text(text), bytes: text.utf8.count, expiresAt: message.expiresAt)
                } else {
                    let bytes = ProtobufFrameCodec.message(message, sequenceId: id)
                    kept = Kept(id: id, frame: .binary(bytes), bytes: bytes.count, expiresAt: message.expiresAt)
                }
                s.unacked.append(kept)
                s.unackedBytes += kept.bytes
                replayBudget.add(kept.bytes)
                // Messages past their TTL do not hold the session's room (they would not be replayed).
                if s.unacked.count > Self.maxUnackedMessages || s.unackedBytes > Self.maxUnackedBytes { _ = dropExpired(&s, now: .now) }
                if s.unacked.count > Self.maxUnackedMessages || s.unackedBytes > Self.maxUnackedBytes { return .bufferFull }
                // Without a socket the message is kept for the replay.
                guard let socket = s.socket else { return .noSocket }
                // Queued under the lock, so that the socket gets the sequence ids in order.
                return Self.queue(kept.frame, on: socket, drains: &drains)
            }
        }
        return state.withLock { s in
            guard let socket = s.socket else { return .noSocket }
            return Self.queue(frame, on: socket, drains: &drains)
        }
    }

    private static func queue(_ frame: SocketFrame, on socket: ClientSocket, drains: inout DrainBatch) -> DeliverResult {
        switch socket.enqueue(frame) {
        case .drainNeeded:
            drains.add(socket)
            return .sent
        case .queued: return .sent
        case .refused: return .noSocket
        case .full: return .slowClient
        }
    }

    /// Bytes kept for this connection's replay.
    var replayBytes: Int { state.withLock { $0.unackedBytes } }

    /// Drops the kept messages whose TTL passed; returns how many.
    func dropExpiredReplays() -> Int {
        state.withLock { s in dropExpired(&s, now: .now) }
    }

    /// `sequenceAck`: drops what the client confirmed (every id up to `sequenceId`).
    func acknowledge(upTo sequenceId: UInt64) {
        state.withLock { s in
            while let first = s.unacked.first, first.id <= sequenceId {
                s.unackedBytes -= first.bytes
                replayBudget.add(-first.bytes)
                s.unacked.removeFirst()
            }
        }
    }

    /// Ack ids remembered per connection for `Duplicate` answers: the most recent ones.
    static let rememberedAckIds = 10_000

    /// `invoke`s in progress on one connection, at most: each holds an upstream call.
    static let maxInvocations = 64

    enum InvocationStart: Equatable {
        /// With the token that tells this start's answer from that of an earlier one of the same id.
        case started(token: UInt64)
        /// One with this id is in progress.
        case duplicate
        /// `maxInvocations` upstream calls are running (cancelled ones count until they end).
        case tooMany
    }

    func startInvocation(_ id: String) -> InvocationStart {
        state.withLock { s in
            if s.invocations[id] != nil { return .duplicate }
            if s.invocationsRunning >= Self.maxInvocations { return .tooMany }
            s.nextInvocationToken += 1
            s.invocations[id] = s.nextInvocationToken
            s.invocationsRunning += 1
            return .started(token: s.nextInvocationToken)
        }
    }

    /// The client no longer waits for `id`: its answer is not sent. Its call still counts until it ends.
    func cancelInvocation(_ id: String) {
        _ = state.withLock { $0.invocations.removeValue(forKey: id) }
    }

    /// The invocation started with `token` is over; true when its answer is still wanted (not
    /// cancelled, and the id not reused since).
    func finishInvocation(_ id: String, token: UInt64) -> Bool {
        state.withLock { s in
            s.invocationsRunning -= 1
            guard s.invocations[id] == token else { return false }
            s.invocations[id] = nil
            return true
        }
    }

    /// Records an `ackId`; false when it was seen before (a `Duplicate`).
    func firstUse(ackId: UInt64) -> Bool {
        state.withLock { s in
            guard s.seenAckIds.insert(ackId).inserted else { return false }
            s.ackIdOrder.append(ackId)
            if s.ackIdOrder.count > Self.rememberedAckIds, let oldest = s.ackIdOrder.popFirst() {
                s.seenAckIds.remove(oldest)
            }
            return true
        }
    }

    /// Marks the connection ended and closes its socket (after `frames`, the last of which is
    /// the close).
    func end(closing frames: [SocketFrame]) {
        let socket: ClientSocket? = state.withLock { s in
            s.ended = true
            Self.wakeAway(&s)
            defer { s.socket = nil }
            replayBudget.add(-s.unackedBytes)
            s.unacked.removeAll()
            s.unackedBytes = 0
            return s.socket
        }
        guard let socket else { return }
        var needsDrain = false
        for frame in frames {
            if case .drainNeeded = socket.enqueue(frame) { needsDrain = true }
        }
        if needsDrain { socket.drainSoon() }
        socket.finish()
    }
}

/// The memory the hub keeps for reliable replays, across every session: when it is over its
/// limit, the sessions holding the most are ended first (see `LocalHub.fanOut`).
final class ReplayBudget: Sendable {
    let limit: Int
    private let used = Atomic<Int>(0)

    init(limit: Int = 256 * 1024 * 1024) { self.limit = limit }

    func add(_ bytes: Int) { used.add(bytes, ordering: .relaxed) }
    var bytes: Int { used.load(ordering: .relaxed) }
    var isOver: Bool { bytes > limit }
}
