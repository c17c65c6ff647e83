import BridgeObservability
import Synchronization
import Testing

@testable import BridgeCore

/// 401, 403 and outages are conditions of the route, not failures of a message.
@Suite struct RouteConditionsTests {
    let refused = DeliveryFailure(.permanent, status: 401, message: "Unauthorized")
    let forbidden = DeliveryFailure(.permanent, status: 403, message: "Forbidden")
    let refusedConnection = DeliveryFailure(.retryable(retryAfter: nil), message: "connection refused")
    let serverError = DeliveryFailure(.retryable(retryAfter: nil), status: 503, message: "Service Unavailable")
    let badRequest = DeliveryFailure(.permanent, status: 400, message: "Bad Request")
    let throttled = DeliveryFailure(.retryable(retryAfter: nil), status: 429, message: "Too Many Requests")

    @Test func refusedCredentialsPauseAtOnceAndAnAcceptedSendEndsIt() throws {
        let c = RouteConditions()
        let pause = try #require(c.failed(route: "r", refused))
        #expect(pause.condition == .refused(status: 401, message: "Unauthorized"))
        #expect(pause.log?.contains("access key") == true)
        #expect(c.healthProblem?.contains("route r waits: Web PubSub refuses the bridge (401") == true)
        #expect(c.failed(route: "r", forbidden)?.log?.contains("Web PubSub Service Owner") == true)
        let ended = try #require(c.accepted(route: "r"))
        #expect(ended.condition == .refused(status: 403, message: "Forbidden"))
        #expect(c.healthProblem == nil)
        #expect(c.accepted(route: "r") == nil)
    }

    @Test func anOutageIsSeveralServiceFailuresInARow() throws {
        let c = RouteConditions(outageThreshold: 3)
        #expect(c.failed(route: "r", refusedConnection) == nil)
        #expect(c.failed(route: "r", serverError) == nil)
        let pause = try #require(c.failed(route: "r", refusedConnection))
        #expect(pause.probe == 1)
        #expect(c.failed(route: "r", serverError)?.probe == 2)
        #expect(c.healthProblem?.contains("unreachable or failing") == true)
        #expect(c.accepted(route: "r") != nil)
        #expect(c.condition(of: "r") == nil)
    }

    @Test func anAcceptedSendOrAnAnswerBetweenKeepsFailuresTheMessages() {
        let c = RouteConditions(outageThreshold: 3)
        for _ in 0..<10 {
            #expect(c.failed(route: "r", serverError) == nil)
            #expect(c.failed(route: "r", serverError) == nil)
            _ = c.accepted(route: "r")
        }
        #expect(c.failed(route: "r", serverError) == nil)
        #expect(c.failed(route: "r", serverError) == nil)
        // A 400 or 429 is an answer: the service is there and took the credentials.
        #expect(c.failed(route: "r", badRequest) == nil)
        #expect(c.failed(route: "r", serverError) == nil)
        #expect(c.failed(route: "r", throttled) == nil)
        #expect(c.failed(route: "r", serverError) == nil)
        #expect(c.condition(of: "r") == nil)
        // Routes are separate.
        _ = c.failed(route: "other", refused)
        #expect(c.condition(of: "r") == nil)
        #expect(c.condition(of: "other") != nil)
    }

    @Test func theExplanationIsLoggedOnceEvery30Seconds() {
        let c = RouteConditions()
        let t0 = ContinuousClock.now
        #expect(c.failed(route: "r", refused, now: t0)?.log != nil)
        for s in 1..<30 { #expect(c.failed(route: "r", refused, now: t0 + .seconds(s))?.log == nil) }
        let again = c.failed(route: "r", refused, now: t0 + .seconds(30))?.log
        #expect(again?.contains("waits for 30 s") == true, "\(String(describing: again))")
    }

    /// Through the dispatcher: 401s for a while, then accepted. Each message is sent once
    /// successfully, none is dead-lettered, none is acknowledged before it was delivered, and
    /// the refused tries did not use up `maxAttempts` (3).
    @Test func theDispatcherWaitsOutRefusedCredentials() async throws {
        let fixed = Atomic<Bool>(false)
        let refusedTries = Atomic<Int>(0)
        let transport = ScriptedTransport { _, _ in
            if !fixed.load(ordering: .relaxed) {
                refusedTries.add(1, ordering: .relaxed)
                throw DeliveryFailure(.permanent, status: 401, message: "Unauthorized")
            }
        }
        let sink = MemorySink()
        let d = Dispatcher(
            routes: [route([groupTarget("g")], ordering: .none)], transport: transport, deadLetter: sink, settings: settings(attempts: 3),
            logger: quietLogger)
        let source = ListSource((0..<10).map { message("m\($0)", dataType: .text) })
        let run = Task { try await d.run(sources: [source]) }
        #expect(await eventually { d.conditions.condition(of: "r") != nil && refusedTries.load(ordering: .relaxed) >= 40 })
        #expect(source.outcomes.withLock { $0.isEmpty }, "nothing is acknowledged while the route waits")
        #expect(transport.sent.withLock { $0.isEmpty })
        fixed.store(true, ordering: .relaxed)
        try await run.value
        #expect(transport.sent.withLock { $0.map(\.body).sorted() } == (0..<10).map { "m\($0)" }.sorted())
        #expect(sink.records.withLock { $0.isEmpty }, "nothing dead-lettered")
        #expect(source.outcomes.withLock { $0.count == 10 && $0.values.allSatisfy { $0 == .done } })
        #expect(d.stats.deadLettered.load(ordering: .relaxed) == 0)
        #expect(d.conditions.healthProblem == nil)
    }

    func eventually(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }
}

/// Log lines a stranger can cause are bounded, and what is left out is counted.
@Suite struct LogThrottleTests {
    @Test func tenAMinuteThenACount() {
        let throttle = LogThrottle(limit: 10, interval: .seconds(60))
        let t0 = ContinuousClock.now
        for i in 0..<10 { #expect(throttle.admit(now: t0 + .milliseconds(i)) == 0) }
        for i in 0..<990 { #expect(throttle.admit(now: t0 + .milliseconds(10 + i)) == nil) }
        // The next window's first line says how many were not logged.
        #expect(throttle.admit(now: t0 + .seconds(61)) == 990)
        #expect(throttle.admit(now: t0 + .seconds(62)) == 0)
    }
}
