import Foundation
import NIOCore
import Synchronization

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
    let reconnectionToken: String?
    /// Claims, query and headers of the connect request, for upstream events.
    let subprotocolHeader: String?

    /// The unacknowledged messages kept for a reliable connection, at most.
    static let maxUnackedMessages = 1000
    static let maxUnackedBytes = 16 * 1024 * 1024
    /// Frames queued for a socket before the client counts as too slow.
    static let socketBuffer = 4096

    private struct State {
        var socket: AsyncStream<SocketFrame>.Continuation?
        var socketGeneration = 0
        var nextSequenceId: UInt64 = 1
        var unacked = CircularBuffer<(id: UInt64, frame: String)>()
        var unackedBytes = 0
        var seenAckIds: Set<UInt64> = []
        var ackIdOrder = CircularBuffer<UInt64>()
        var connectionState: String?
        var ended = false
    }

    private let state = Mutex(State())

    init(
        id: String, hub: String, userId: String?, proto: ClientProtocol, plainMode: PlainMode, roles: Set<String>,
        subprotocolHeader: String?, connectionState: String?
    ) {
        self.id = id
        self.hub = hub
        self.userId = userId
        self.proto = proto
        self.plainMode = plainMode
        self.roles = roles
        self.subprotocolHeader = subprotocolHeader
        self.reconnectionToken = proto.isReliable ? UUID().uuidString + UUID().uuidString : nil
        state.withLock { $0.connectionState = connectionState }
    }

    var connectionState: String? {
        get { state.withLock { $0.connectionState } }
        set { state.withLock { $0.connectionState = newValue } }
    }

    var isEnded: Bool { state.withLock { $0.ended } }

    /// Attaches a new socket; returns its stream and generation. For a reconnect, the messages
    /// not yet acknowledged are queued first, with their original sequence ids.
    func attach(greeting: String?) -> (AsyncStream<SocketFrame>, Int) {
        let (stream, continuation) = AsyncStream<SocketFrame>.makeStream(bufferingPolicy: .bufferingOldest(Self.socketBuffer + Self.maxUnackedMessages))
        let generation: Int = state.withLock { s in
            s.socket?.finish()
            s.socket = continuation
            s.socketGeneration += 1
            if let greeting { continuation.yield(.text(greeting)) }
            for entry in s.unacked { continuation.yield(.text(entry.frame)) }
            return s.socketGeneration
        }
        return (stream, generation)
    }

    /// Detaches the socket of `generation` (if it is still the current one).
    func detach(generation: Int) {
        state.withLock { s in
            guard s.socketGeneration == generation else { return }
            s.socket?.finish()
            s.socket = nil
        }
    }

    var hasSocket: Bool { state.withLock { $0.socket != nil } }

    /// Counts the sockets attached so far.
    var currentGeneration: Int { state.withLock { $0.socketGeneration } }

    /// Queues a raw frame (acks, system messages).
    @discardableResult
    func sendRaw(_ frame: SocketFrame) -> Bool {
        state.withLock { s in
            guard let socket = s.socket else { return false }
            if case .dropped = socket.yield(frame) { return false }
            return true
        }
    }

    enum DeliverResult { case sent, noSocket, slowClient, bufferFull }

    /// Sends a data message as this connection's protocol renders it.
    @discardableResult
    func deliver(_ message: Outgoing) -> DeliverResult {
        let frame: SocketFrame
        switch proto {
        case .plain:
            switch message.dataType {
            case .binary: frame = .binaryBytes(message.payloadBytes)
            case .json, .text: frame = .textBytes(message.payloadBytes)
            }
            return state.withLock { s in
                guard let socket = s.socket else { return .noSocket }
                if case .dropped = socket.yield(frame) { return .slowClient }
                return .sent
            }
        case .json:
            return state.withLock { s in
                guard let socket = s.socket else { return .noSocket }
                if case .dropped = socket.yield(.textBytes(message.jsonFrameBytes)) { return .slowClient }
                return .sent
            }
        case .reliableJSON:
            return state.withLock { s in
                if s.ended { return .noSocket }
                let id = s.nextSequenceId
                s.nextSequenceId += 1
                let text = message.jsonFrame(sequenceId: id)
                s.unacked.append((id, text))
                s.unackedBytes += text.utf8.count
                if s.unacked.count > Self.maxUnackedMessages || s.unackedBytes > Self.maxUnackedBytes { return .bufferFull }
                guard let socket = s.socket else { return .noSocket }  // kept for replay
                if case .dropped = socket.yield(.text(text)) { return .slowClient }
                return .sent
            }
        }
    }

    /// `sequenceAck`: drops what the client confirmed (every id up to `sequenceId`).
    func acknowledge(upTo sequenceId: UInt64) {
        state.withLock { s in
            while let first = s.unacked.first, first.id <= sequenceId {
                s.unackedBytes -= first.frame.utf8.count
                s.unacked.removeFirst()
            }
        }
    }

    /// Ack ids remembered per connection for `Duplicate` answers: the most recent ones.
    static let rememberedAckIds = 10_000

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

    /// Marks the connection ended and closes its socket (after `frames`).
    func end(closing frames: [SocketFrame]) {
        state.withLock { s in
            s.ended = true
            if let socket = s.socket {
                for f in frames { socket.yield(f) }
                socket.finish()
            }
            s.socket = nil
            s.unacked.removeAll()
            s.unackedBytes = 0
        }
    }
}
