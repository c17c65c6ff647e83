import Synchronization

/// Failures that belong to a route, not to a message: Web PubSub refusing the bridge's
/// credentials (401, 403: a rotated key, a missing role), or not answering at all (connection
/// failures, timeouts and 5xx for every send: an outage). Dead-lettering messages for them would
/// empty a whole stream into the dead-letter sink, or with `deadLetter: {type: drop}` lose it.
///
/// While a route has such a condition its sends wait and are tried again with the retry
/// backoff (each waiting send is a probe); those tries do not count toward `maxAttempts`,
/// nothing is dead-lettered or acknowledged because of them, and the sources stop at the
/// in-flight limit. The first accepted send clears the condition. `/readyz` names it, and one
/// log line every 30 s says what is wrong and how to fix it.
package final class RouteConditions: HealthReporting, Sendable {
    /// Why a route waits.
    package enum Condition: Sendable, Equatable {
        /// 401 or 403: the bridge's key, token or role.
        case refused(status: Int, message: String)
        /// No answer, or 5xx, for `outageThreshold` sends in a row with none accepted between.
        case unavailable(message: String)
    }

    /// Service-side failures (no response, 5xx) in a row, with no accepted send between, that
    /// make an outage; fewer are retried as the message's own failures.
    package let outageThreshold: Int
    /// How often the same condition is logged again.
    package let logInterval: Duration

    private struct State {
        var condition: Condition?
        /// Service-side failures since the last accepted send.
        var failuresInARow = 0
        /// Tries made while the condition holds: the backoff's attempt number.
        var probes = 0
        var since: ContinuousClock.Instant?
        var loggedAt: ContinuousClock.Instant?
    }

    private let states = Mutex<[String: State]>([:])

    package init(outageThreshold: Int = 3, logInterval: Duration = .seconds(30)) {
        self.outageThreshold = outageThreshold
        self.logInterval = logInterval
    }

    /// What a wait looks like to the dispatcher.
    package struct Pause: Sendable {
        /// The backoff attempt number for the next try.
        package let probe: Int
        package let condition: Condition
        /// A line to log now (the first time, then at most every `logInterval`).
        package let log: String?
    }

    /// Whether `failure` is the service's rather than the message's: 401 and 403 always; no
    /// response or a 5xx when it is one of a run.
    static func isRefusal(_ failure: DeliveryFailure) -> Bool { failure.status == 401 || failure.status == 403 }

    static func isServiceSide(_ failure: DeliveryFailure) -> Bool {
        guard case .retryable = failure.kind else { return false }
        guard let status = failure.status else { return true }
        return status >= 500
    }

    /// Records a failed send of `route`. Returns how to wait when the route now has a condition
    /// (the attempt does not count); nil when the message's own retry policy applies.
    package func failed(route: String, _ failure: DeliveryFailure, now: ContinuousClock.Instant = .now) -> Pause? {
        states.withLock { all in
            var state = all[route, default: State()]
            defer { all[route] = state }
            let condition: Condition
            if Self.isRefusal(failure) {
                condition = .refused(status: failure.status ?? 401, message: failure.message)
            } else if Self.isServiceSide(failure) {
                state.failuresInARow += 1
                guard state.condition != nil || state.failuresInARow >= outageThreshold else { return nil }
                condition = state.condition ?? .unavailable(message: failure.description)
            } else {
                // The service answered (400, 404, 429...): it is there, and took the credentials.
                state = State()
                return nil
            }
            if state.condition == nil || Self.kindChanged(state.condition, condition) {
                state.condition = condition
                state.since = state.since ?? now
                state.loggedAt = nil
            }
            state.probes += 1
            var line: String?
            if state.loggedAt.map({ now - $0 >= logInterval }) ?? true {
                state.loggedAt = now
                line = Self.explain(condition, route: route, since: state.since.map { now - $0 } ?? .zero)
            }
            return Pause(probe: state.probes, condition: condition, log: line)
        }
    }

    private static func kindChanged(_ old: Condition?, _ new: Condition) -> Bool {
        switch (old, new) {
        case (.refused(let a, _), .refused(let b, _)): a != b
        case (.unavailable, .unavailable): false
        default: true
        }
    }

    /// Records an accepted send; returns how long the route had waited when this ends a condition.
    package func accepted(route: String, now: ContinuousClock.Instant = .now) -> (condition: Condition, waited: Duration)? {
        states.withLock { all in
            guard let state = all[route], state.condition != nil || state.failuresInARow > 0 else { return nil }
            all[route] = nil
            guard let condition = state.condition else { return nil }
            return (condition, state.since.map { now - $0 } ?? .zero)
        }
    }

    /// The current condition of `route`, if any.
    package func condition(of route: String) -> Condition? { states.withLock { $0[route]?.condition } }

    /// Forgets routes a reload removed.
    package func retain(routes: Set<String>) {
        states.withLock { all in all = all.filter { routes.contains($0.key) } }
    }

    package var healthProblem: String? {
        let problems = states.withLock { all in
            all.compactMap { route, state in state.condition.map { (route, $0) } }.sorted { $0.0 < $1.0 }
        }
        guard !problems.isEmpty else { return nil }
        return problems.map { route, condition in "route \(route) waits: \(Self.summary(condition))" }.joined(separator: "; ")
    }

    static func summary(_ condition: Condition) -> String {
        switch condition {
        case .refused(let status, let message): "Web PubSub refuses the bridge (\(status) \(message))"
        case .unavailable(let message): "Web PubSub is unreachable or failing (\(message))"
        }
    }

    /// The log line: what is wrong, the likely fix, and that nothing is lost meanwhile.
    static func explain(_ condition: Condition, route: String, since: Duration) -> String {
        let waiting = since > .seconds(1) ? " for \(Int(since.components.seconds)) s" : ""
        let fix: String
        switch condition {
        case .refused(401, _):
            fix =
                "the access key is wrong or was rotated, or the token is invalid: give the current key (connection string, accessKeyFile) and reload (SIGHUP)"
        case .refused(_, _):
            fix = "the identity is not allowed: give it the 'Web PubSub Service Owner' role on the resource (or use a key that is enabled)"
        case .unavailable:
            fix = "check the endpoint, the network and the service's health"
        }
        return "route \(route) waits\(waiting): \(summary(condition)); \(fix). Its sends are tried again with backoff and go on by themselves; "
            + "nothing is dead-lettered or acknowledged meanwhile"
    }
}
