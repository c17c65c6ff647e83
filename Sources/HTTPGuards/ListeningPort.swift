import Synchronization

/// The port a server listens on, for whoever waits for it: set once the server listens, closed
/// when it stops, so that nobody waits for a server that never came up (a port already in use).
package final class ListeningPort: Sendable {
    private struct State {
        var port: Int?
        var stopped = false
        var waiters: [Int: CheckedContinuation<Int, any Error>] = [:]
        var nextWaiter = 0
    }

    /// Thrown to waiters when the server stopped without listening.
    package struct NotListening: Error, CustomStringConvertible {
        package let what: String
        package var description: String { "\(what) is not listening (it stopped or could not start)" }
    }

    private let what: String
    private let state = Mutex(State())

    package init(_ what: String) {
        self.what = what
    }

    /// The port, when listening now.
    package var current: Int? { state.withLock { $0.stopped ? nil : $0.port } }

    /// Records the port and wakes every waiter.
    package func set(_ port: Int) {
        let waiters = state.withLock { s in
            s.port = port
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: port) }
    }

    /// The server stopped: waiters (and later callers) fail.
    package func stop() {
        let waiters = state.withLock { s in
            s.stopped = true
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for waiter in waiters { waiter.resume(throwing: NotListening(what: what)) }
    }

    /// Waits until the server listens.
    /// - Throws: ``NotListening`` when it stopped first; `CancellationError` when the task is cancelled.
    package func wait() async throws -> Int {
        let id = state.withLock { s in
            defer { s.nextWaiter += 1 }
            return s.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int, any Error>) in
                let result: Result<Int, any Error>? = state.withLock { s in
                    if s.stopped { return .failure(NotListening(what: what)) }
                    if let port = s.port { return .success(port) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    s.waiters[id] = continuation
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }
}
