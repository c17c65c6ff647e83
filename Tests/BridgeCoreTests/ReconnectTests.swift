import BridgeCore
import BridgeObservability
import BridgeTestSupport
import FoundationEssentials
import Logging
import Synchronization
import Testing

@Suite struct BackoffTests {
    @Test func doublesUpToTheMaximumAndResets() {
        var b = Backoff(initial: .milliseconds(100), maximum: .milliseconds(500))
        #expect(
            (0..<5).map { _ in b.next() } == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(500), .milliseconds(500)])
        b.reset()
        #expect(b.next() == .milliseconds(100))
    }

    @Test func aFloorRaisesTheNextWaitButNotPastTheMaximum() {
        var b = Backoff(initial: .milliseconds(100), maximum: .seconds(5))
        b.atLeast(.seconds(2))
        #expect(b.next() == .seconds(2))
        #expect(b.next() == .seconds(4))
        b.atLeast(.seconds(60))
        #expect(b.next() == .seconds(5))
    }
}

@Suite struct ConnectionHealthTests {
    /// A problem that lasts is logged once per interval, a new problem at once, and the end of
    /// a logged problem once.
    @Test func logsAProblemWhenItStartsChangesOrLastsAnInterval() {
        let log = CapturedLog()
        let health = ConnectionHealth(logger: log.logger, initialProblem: "not connected yet", logInterval: .seconds(30))
        #expect(health.problem == "not connected yet")
        let t0 = ContinuousClock.now
        #expect(health.failed("refused", "connect failed", now: t0))
        #expect(!health.failed("refused", "connect failed", now: t0 + .seconds(29)))
        #expect(health.failed("refused", "connect failed", now: t0 + .seconds(31)))
        #expect(health.failed("timed out", "connect failed", now: t0 + .seconds(32)))
        #expect(health.problem == "timed out")
        health.recovered("connection recovered")
        health.recovered("connection recovered")
        #expect(health.problem == nil)
        let lines = log.all
        #expect(lines.count == 4, "\(lines)")
        #expect(lines.first == "error connect failed error=refused")
        #expect(lines.last == "notice connection recovered wps.previous_problem=timed out")
    }

    /// A problem recorded without a line ends without one either.
    @Test func aNotedProblemIsClearedQuietly() {
        let log = CapturedLog()
        let health = ConnectionHealth(logger: log.logger)
        health.note("reconnecting")
        #expect(health.problem == "reconnecting")
        health.recovered("connection recovered")
        #expect(health.problem == nil)
        #expect(log.all.isEmpty)
    }
}

@Suite struct ReconnectLoopTests {
    struct Refused: Error {}
    struct Unrelated: Error {}

    /// Failed attempts back off, a working connection resets the wait and is counted as a
    /// reconnect from the second on, and an error that is not about the connection ends the loop.
    @Test func reconnectsWithBackoffUntilAnUnrelatedError() async throws {
        let log = CapturedLog()
        // Every failure logged (no interval), to see each wait.
        let health = ConnectionHealth(logger: log.logger, logInterval: .zero)
        let loop = ReconnectLoop(
            source: "s", health: health, backoff: Backoff(initial: .milliseconds(1), maximum: .milliseconds(4)),
            message: "connection failed; retrying")
        // fail, fail, connect then drop, fail, connect then an unrelated error
        let script: [(connects: Bool, error: any Error)] = [
            (false, Refused()), (false, Refused()), (true, Refused()), (false, Refused()), (true, Unrelated()),
        ]
        let step = Mutex(0)
        let seen = Mutex<[(isReconnect: Bool, hadDisconnect: Bool, problem: String?)]>([])
        await #expect(throws: Unrelated.self) {
            try await loop.run { attempt in
                let i = step.withLock { i in
                    defer { i += 1 }
                    return i
                }
                if script[i].connects { attempt.connected() }
                seen.withLock { $0.append((attempt.isReconnect, attempt.disconnectedAt != nil, health.problem)) }
                throw script[i].error
            } classify: { error in
                error is Refused ? .init(problem: "refused") : nil
            }
        }
        let attempts = seen.withLock { $0 }
        #expect(attempts.map(\.isReconnect) == [false, false, false, true, true])
        #expect(attempts.map(\.hadDisconnect) == [false, false, false, true, true])
        // Connected clears the problem; a failed attempt keeps it.
        #expect(attempts.map(\.problem) == [nil, "refused", nil, "refused", nil])
        let waits = log.all.filter { $0.hasPrefix("error") }.map { $0.components(separatedBy: "wps.retry_in=").last ?? "" }
        // 1, 2 ms; after the connection 1 ms again.
        #expect(
            waits == ["0.001 seconds wps.source=s", "0.002 seconds wps.source=s", "0.001 seconds wps.source=s", "0.002 seconds wps.source=s"],
            "\(log.all)")
        #expect(log.all.contains { $0.hasPrefix("notice connection recovered") })
    }

    @Test func cancellationEndsTheLoopQuietly() async throws {
        let loop = ReconnectLoop(
            source: "s", health: ConnectionHealth(logger: Logger(label: "t")), backoff: Backoff(initial: .seconds(60), maximum: .seconds(60)),
            message: "failed")
        let task = Task {
            try await loop.run { _ in
                throw Refused()
            } classify: { _ in
                .init(problem: "refused")
            }
        }
        try await Task.sleep(for: .milliseconds(50))
        task.cancel()
        try await task.value
    }
}
