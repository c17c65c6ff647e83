import BridgeObservability
import CoreMetrics
package import Logging
import Synchronization

/// Exponential backoff: the first wait is `initial`, each next one twice the last, at most
/// `maximum`; back to `initial` once the connection worked.
package struct Backoff: Sendable, Equatable {
    package let initial: Duration
    package let maximum: Duration
    /// The wait ``next()`` gives next.
    package private(set) var current: Duration

    package init(initial: Duration, maximum: Duration) {
        precondition(initial > .zero && maximum >= initial, "a backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        current = initial
    }

    /// The wait before the next attempt; the one after it is twice as long, at most `maximum`.
    package mutating func next() -> Duration {
        defer { current = min(current * 2, maximum) }
        return current
    }

    /// The connection worked: the next wait is `initial` again.
    package mutating func reset() { current = initial }

    /// The next wait is at least `floor` (a failure that retrying at once cannot cure, such as
    /// refused credentials), at most `maximum`.
    package mutating func atLeast(_ floor: Duration) { current = min(max(current, floor), maximum) }
}

/// The health of one connection a component keeps up, for `/readyz` and the log: the problem
/// while there is one, an error line when it starts, when it changes and at most every
/// `logInterval` while it lasts (a broker down for an hour gives 120 lines, not one per retry),
/// and a notice when it is over.
package final class ConnectionHealth: Sendable {
    package let logInterval: Duration
    private let logger: Logger

    private struct State {
        var problem: String?
        var lastLogged: (problem: String, at: ContinuousClock.Instant)?
    }

    private let state: Mutex<State>

    /// `initialProblem`: what `/readyz` says before the first connection (nil: ready at once).
    package init(logger: Logger, initialProblem: String? = nil, logInterval: Duration = .seconds(30)) {
        self.logger = logger
        self.logInterval = logInterval
        state = Mutex(State(problem: initialProblem))
    }

    /// The current problem, nil when healthy.
    package var problem: String? { state.withLock { $0.problem } }

    /// Records `problem` and logs `message` at error level with `problem` as `LogKey.error`,
    /// unless the same problem was logged less than `logInterval` ago.
    /// - Returns: whether the line was written.
    @discardableResult
    package func failed(
        _ problem: String, _ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:],
        now: ContinuousClock.Instant = .now
    ) -> Bool {
        let log = state.withLock { s -> Bool in
            s.problem = problem
            if let last = s.lastLogged, last.problem == problem, now - last.at < logInterval { return false }
            s.lastLogged = (problem, now)
            return true
        }
        if log { logger.error(message(), metadata: metadata().merging([LogKey.error: "\(problem)"]) { current, _ in current }) }
        return log
    }

    /// Records a problem without logging it (one that is logged otherwise, or expected).
    package func note(_ problem: String) {
        state.withLock { $0.problem = problem }
    }

    /// The connection works again; a problem that was logged gets a notice that it is over.
    package func recovered(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        let previous = state.withLock { s -> String? in
            defer { s = State() }
            return s.lastLogged?.problem
        }
        if let previous {
            logger.notice(message(), metadata: metadata().merging([LogKey.previousProblem: "\(previous)"]) { current, _ in current })
        }
    }
}

/// Keeps one connection of a source up until the task is cancelled: connects, serves, and when
/// that fails, records the problem (``ConnectionHealth``), waits (``Backoff``) and connects again,
/// counting reconnects in ``MetricName/sourceReconnects``.
///
/// The Redis sources run on it; the group listener, whose sessions are recovered before they are
/// replaced, uses its parts.
package struct ReconnectLoop: Sendable {
    /// How the loop treats one failure.
    package struct Failure: Sendable {
        /// For `/readyz` and the log line.
        package var problem: String
        /// Extra metadata for the log line.
        package var metadata: Logger.Metadata
        /// The next wait is at least this (a failure retrying at once cannot cure).
        package var waitAtLeast: Duration?

        package init(problem: String, metadata: Logger.Metadata = [:], waitAtLeast: Duration? = nil) {
            self.problem = problem
            self.metadata = metadata
            self.waitAtLeast = waitAtLeast
        }
    }

    /// One connection of the loop. Its body calls ``connected()`` once the connection is up
    /// (subscribed, groups created): the problem is cleared, the reconnect counted, and the
    /// waits start again at the backoff's `initial` after this connection ends.
    package final class Attempt: Sendable {
        /// Whether a connection worked before this one.
        package let isReconnect: Bool
        /// When the last working connection was lost; nil before the first one.
        package let disconnectedAt: ContinuousClock.Instant?
        private let isUp = Atomic<Bool>(false)
        private let loop: ReconnectLoop

        fileprivate init(_ loop: ReconnectLoop, isReconnect: Bool, disconnectedAt: ContinuousClock.Instant?) {
            self.loop = loop
            self.isReconnect = isReconnect
            self.disconnectedAt = disconnectedAt
        }

        /// The connection is up. Calls after the first do nothing.
        package func connected() {
            guard !isUp.exchange(true, ordering: .relaxed) else { return }
            loop.health.recovered("connection recovered", metadata: [LogKey.source: "\(loop.source)"])
            if isReconnect { Counter(label: MetricName.sourceReconnects, dimensions: [("source", loop.source)]).increment() }
        }

        fileprivate var wasConnected: Bool { isUp.load(ordering: .relaxed) }
    }

    package let source: String
    package let health: ConnectionHealth
    package let backoff: Backoff
    let message: Logger.Message

    /// - Parameters:
    ///   - message: the constant error line, e.g. "redis pub/sub connection failed; reconnecting";
    ///     the problem and the wait go into its metadata.
    package init(source: String, health: ConnectionHealth, backoff: Backoff, message: Logger.Message) {
        self.source = source
        self.health = health
        self.backoff = backoff
        self.message = message
    }

    /// Runs `body` again and again until the task is cancelled. `body` returns or throws when
    /// its connection ends; `classify` turns what it threw into a ``Failure`` (nil: the error is
    /// not about the connection, and the loop ends by throwing it).
    package func run(_ body: (Attempt) async throws -> Void, classify: (any Error) -> Failure?) async throws {
        var backoff = backoff
        var everConnected = false
        var disconnectedAt: ContinuousClock.Instant?
        while !Task.isCancelled {
            let attempt = Attempt(self, isReconnect: everConnected, disconnectedAt: disconnectedAt)
            var failure = Failure(problem: "the connection ended")
            do {
                try await body(attempt)
                if Task.isCancelled { return }
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                guard let classified = classify(error) else { throw error }
                failure = classified
            }
            if attempt.wasConnected {
                everConnected = true
                disconnectedAt = .now
                backoff.reset()
            }
            if let floor = failure.waitAtLeast { backoff.atLeast(floor) }
            let wait = backoff.next()
            var metadata = failure.metadata
            metadata[LogKey.source] = "\(source)"
            metadata[LogKey.retryIn] = "\(wait)"
            health.failed(failure.problem, message, metadata: metadata)
            do { try await Task.sleep(for: wait) } catch { return }
        }
    }
}
