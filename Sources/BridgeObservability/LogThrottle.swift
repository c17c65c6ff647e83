import Synchronization

/// At most `limit` log lines per `interval` for one kind of event a stranger can cause (a
/// refused request): past that they are counted, and the next line that may be written says
/// how many were left out. The log cannot be flooded, and nothing is hidden without a trace.
package final class LogThrottle: Sendable {
    package let limit: Int
    package let interval: Duration

    private struct State {
        var windowStart: ContinuousClock.Instant?
        var written = 0
        var suppressed = 0
    }

    private let state = Mutex(State())

    package init(limit: Int = 10, interval: Duration = .seconds(60)) {
        self.limit = limit
        self.interval = interval
    }

    /// nil when this event is not to be logged; else how many were left out before it.
    package func admit(now: ContinuousClock.Instant = .now) -> Int? {
        state.withLock { s in
            if s.windowStart.map({ now - $0 >= interval }) ?? true {
                s.windowStart = now
                s.written = 0
            }
            guard s.written < limit else {
                s.suppressed += 1
                return nil
            }
            s.written += 1
            defer { s.suppressed = 0 }
            return s.suppressed
        }
    }
}
