import BridgeCore
import DequeModule
import Synchronization

/// Group messages received and not yet handed on: the sockets put, one task takes. Bounded: a
/// put waits while it is full (the socket then stops reading, and the hub keeps the rest).
/// Both waits end with `CancellationError` when their task is cancelled.
final class Inbox: Sendable {
    private struct Putter {
        let id: Int
        let item: Delivery
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var items: Deque<Delivery> = []
        var taker: CheckedContinuation<Delivery, any Error>?
        var putters: Deque<Putter> = []
        var nextPutter = 0
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        self.capacity = capacity
    }

    var isFull: Bool { state.withLock { $0.items.count >= capacity } }

    /// Adds `item`, waiting while the inbox is full.
    func put(_ item: Delivery) async throws {
        let id = state.withLock { s in
            defer { s.nextPutter += 1 }
            return s.nextPutter
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Step {
                    case hand(CheckedContinuation<Delivery, any Error>)
                    case added, wait, cancelled
                }
                let step: Step = state.withLock { s in
                    if Task.isCancelled { return .cancelled }
                    if let taker = s.taker {
                        s.taker = nil
                        return .hand(taker)
                    }
                    if s.items.count < capacity {
                        s.items.append(item)
                        return .added
                    }
                    s.putters.append(Putter(id: id, item: item, continuation: continuation))
                    return .wait
                }
                switch step {
                case .hand(let taker):
                    taker.resume(returning: item)
                    continuation.resume()
                case .added:
                    continuation.resume()
                case .wait:
                    break
                case .cancelled:
                    continuation.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            state.withLock { s -> CheckedContinuation<Void, any Error>? in
                guard let index = s.putters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.putters.remove(at: index).continuation
            }?.resume(throwing: CancellationError())
        }
    }

    /// The oldest item, waiting while there is none. One taker at a time.
    func take() async throws -> Delivery {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Delivery, any Error>) in
                enum Step {
                    case item(Delivery, wake: CheckedContinuation<Void, any Error>?)
                    case wait, cancelled
                }
                let step: Step = state.withLock { s in
                    if Task.isCancelled { return .cancelled }
                    if let first = s.items.popFirst() {
                        // Room for one more: the oldest waiting put goes in.
                        guard let putter = s.putters.popFirst() else { return .item(first, wake: nil) }
                        s.items.append(putter.item)
                        return .item(first, wake: putter.continuation)
                    }
                    if let putter = s.putters.popFirst() { return .item(putter.item, wake: putter.continuation) }
                    s.taker = continuation
                    return .wait
                }
                switch step {
                case .item(let item, let wake):
                    wake?.resume()
                    continuation.resume(returning: item)
                case .wait:
                    break
                case .cancelled:
                    continuation.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            state.withLock { s in
                defer { s.taker = nil }
                return s.taker
            }?.resume(throwing: CancellationError())
        }
    }

    /// Empties the inbox (at shutdown): what was in it, waiting puts included (they fail).
    func removeAll() -> [Delivery] {
        let (items, putters) = state.withLock { s in
            defer {
                s.items.removeAll()
                s.putters.removeAll()
            }
            return (Array(s.items), Array(s.putters))
        }
        for putter in putters { putter.continuation.resume(throwing: CancellationError()) }
        return items + putters.map(\.item)
    }
}
