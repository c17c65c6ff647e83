import Logging
import NIOCore
import ServiceLifecycleTestKit
import Synchronization
import Testing

@testable import BridgeCore

/// Emits fixed messages and records how each was settled.
final class ListSource: SourceAdapter {
    let name: String
    let messages: [Message]
    let outcomes = Mutex<[Int: DeliveryOutcome]>([:])
    let emittedCount = Mutex(0)
    let finishedFlag = Mutex(false)
    var emitted: Int { emittedCount.withLock { $0 } }
    var finished: Bool { finishedFlag.withLock { $0 } }

    init(name: String = "src", _ messages: [Message]) {
        self.name = name
        self.messages = messages
    }

    func run(emit: DeliveryEmitter) async throws {
        for (i, m) in messages.enumerated() {
            try await emit.emit(Delivery(message: m) { outcome in self.outcomes.withLock { $0[i] = outcome } })
            emittedCount.withLock { $0 += 1 }
        }
    }

    func finish() async throws { finishedFlag.withLock { $0 = true } }
}

/// An in-memory transport whose answers the test scripts.
final class ScriptedTransport: DeliveryTransport {
    let sent = Mutex<[(target: ResolvedTarget, body: String)]>([])
    let attempts = Mutex<[String: Int]>([:])
    let concurrency = Mutex((running: 0, max: 0))
    var maxRunning: Int { concurrency.withLock { $0.max } }
    let behaviour: @Sendable (String, Int) async throws -> Void

    /// `behaviour(body, attempt)` throws to fail that attempt.
    init(_ behaviour: @escaping @Sendable (String, Int) async throws -> Void = { _, _ in }) {
        self.behaviour = behaviour
    }

    func send(_ payload: ByteBuffer, dataType: DataType, to target: ResolvedTarget) async throws {
        let body = String(buffer: payload)
        let attempt = attempts.withLock { a in
            a[body, default: 0] += 1
            return a[body]!
        }
        concurrency.withLock { c in
            c.running += 1
            c.max = max(c.max, c.running)
        }
        defer { concurrency.withLock { $0.running -= 1 } }
        try await behaviour(body, attempt)
        sent.withLock { $0.append((target, body)) }
    }
}

final class MemorySink: SinkAdapter {
    let records = Mutex<[SinkRecord]>([])
    let fail: Bool
    init(fail: Bool = false) { self.fail = fail }
    var description: String { "memory" }
    func write(_ record: SinkRecord) async throws {
        if fail { throw CancellationError() }
        records.withLock { $0.append(record) }
    }
}

func route(_ targets: [TargetSpec], ordering: Ordering = .strict, deadLetter: (any SinkAdapter)? = nil) -> Route {
    Route(name: "r", source: "src", targets: targets, ordering: ordering, deadLetter: deadLetter)
}

func groupTarget(_ group: String) -> TargetSpec {
    TargetSpec(hub: Template(literal: "hub"), recipient: .group(try! Template(group)))
}

func settings(maxInFlight: Int = 64, concurrency: Int = 8, attempts: Int = 5) -> DeliverySettings {
    var s = DeliverySettings()
    s.maxInFlight = maxInFlight
    s.concurrency = concurrency
    s.retry = RetryPolicy(maxAttempts: attempts, initialBackoff: .milliseconds(1), maxBackoff: .milliseconds(5))
    s.shutdownTimeout = .milliseconds(200)
    return s
}

let quietLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// Runs `d` on `source` and shuts it down gracefully once every message was taken and a send
/// began (and hangs: the transport's sends never end).
func shutDownWhileSending(_ d: Dispatcher, _ source: ListSource, _ transport: ScriptedTransport) async throws {
    try await testGracefulShutdown { trigger in
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await d.run(sources: [source]) }
            let deadline = ContinuousClock.now + .seconds(30)
            while source.emitted < source.messages.count || transport.attempts.withLock({ $0.isEmpty }), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            trigger.triggerGracefulShutdown()
            try await group.waitForAll()
        }
    }
}

@Suite struct DispatcherTests {
    @Test func keepsOrderPerLaneAndRunsLanesInParallel() async throws {
        // 4 keys x 25 messages; each send sleeps a little so lanes overlap.
        var messages: [Message] = []
        for i in 0..<25 {
            for k in 0..<4 { messages.append(message("\(k):\(i)", dataType: .text, key: "k\(k)")) }
        }
        let source = ListSource(messages)
        let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .milliseconds(Int.random(in: 0...3))) }
        let d = Dispatcher(
            routes: [route([groupTarget("g-{key}")])], transport: transport, deadLetter: nil, settings: settings(), logger: quietLogger)
        try await d.run(sources: [source])
        let sent = transport.sent.withLock { $0 }
        #expect(sent.count == 100)
        for k in 0..<4 {
            let lane = sent.filter { $0.target.recipient == .group("g-k\(k)") }.map(\.body)
            #expect(lane == (0..<25).map { "\(k):\($0)" })
        }
        #expect(transport.maxRunning > 1)
        #expect(source.outcomes.withLock { $0.values.allSatisfy { $0 == .done } && $0.count == 100 })
        #expect(source.finished)
    }

    @Test func strictLaneNeverOverlapsButUnorderedDoes() async throws {
        let messages = (0..<20).map { message("\($0)", dataType: .text) }
        for (ordering, overlaps) in [(Ordering.strict, false), (.none, true)] {
            let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .milliseconds(2)) }
            let d = Dispatcher(
                routes: [route([groupTarget("g")], ordering: ordering)], transport: transport, deadLetter: nil, settings: settings(),
                logger: quietLogger)
            try await d.run(sources: [ListSource(messages)])
            #expect((transport.maxRunning > 1) == overlaps, "\(ordering)")
            #expect(transport.sent.withLock { $0.count } == 20)
        }
    }

    /// One partition, four keys: `strict` sends one at a time; `key` overlaps the keys and
    /// keeps each key's order; a message without a key stays in the partition's lane.
    @Test func keyOrderingIsALanePerKey() async throws {
        let messages = (0..<40).map { i in
            message(
                "\(i % 4):\(i / 4)", dataType: .text, key: i % 10 == 9 ? nil : "k\(i % 4)", origin: Origin(source: "kafka", topic: "t", partition: 0))
        }
        for (ordering, overlaps) in [(Ordering.strict, false), (.key, true)] {
            let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .milliseconds(Int.random(in: 1...3))) }
            let d = Dispatcher(
                routes: [route([groupTarget("g")], ordering: ordering)], transport: transport, deadLetter: nil, settings: settings(),
                logger: quietLogger)
            try await d.run(sources: [ListSource(messages)])
            let sent = transport.sent.withLock { $0 }.map(\.body)
            #expect(sent.count == 40)
            #expect((transport.maxRunning > 1) == overlaps, "\(ordering)")
            for k in 0..<4 {
                let keyed = messages.filter { $0.key == "k\(k)" }.map { String(buffer: $0.payload) }
                #expect(sent.filter { keyed.contains($0) } == keyed, "\(ordering) k\(k)")
            }
        }
    }

    @Test func retriesRetryableFailures() async throws {
        let transport = ScriptedTransport { _, attempt in
            if attempt < 3 { throw DeliveryFailure(.retryable(retryAfter: nil), status: 503, message: "busy") }
        }
        let sink = MemorySink()
        let d = Dispatcher(routes: [route([groupTarget("g")])], transport: transport, deadLetter: sink, settings: settings(), logger: quietLogger)
        let source = ListSource([message("a", dataType: .text)])
        try await d.run(sources: [source])
        #expect(transport.sent.withLock { $0.count } == 1)
        #expect(d.stats.retried.load(ordering: .relaxed) == 2)
        #expect(sink.records.withLock { $0.isEmpty })
        #expect(source.outcomes.withLock { $0[0] } == .done)
    }

    @Test func permanentFailureIsDeadLetteredThenAcked() async throws {
        let transport = ScriptedTransport { body, _ in
            if body == "bad" { throw DeliveryFailure(.permanent, status: 400, message: "Bad Request") }
        }
        let sink = MemorySink()
        let d = Dispatcher(routes: [route([groupTarget("g")])], transport: transport, deadLetter: sink, settings: settings(), logger: quietLogger)
        let source = ListSource([
            message("ok1", dataType: .text),
            message("bad", dataType: .text, key: "K", headers: ["h": "v"], origin: Origin(source: "src", position: "2")),
            message("ok2", dataType: .text),
        ])
        try await d.run(sources: [source])
        #expect(transport.attempts.withLock { $0["bad"] } == 1)
        let records = sink.records.withLock { $0 }
        #expect(records.count == 1)
        let r = try #require(records.first)
        #expect(String(buffer: r.payload) == "bad")
        #expect(r.key == "K")
        #expect(r.headers["h"] == "v")
        #expect(r.headers["wps-status"] == "400")
        #expect(r.headers["wps-error"] == "Bad Request")
        #expect(r.headers["wps-route"] == "r")
        #expect(r.headers["wps-target"] == "hub hub group g")
        #expect(r.headers["wps-source"] == "src@2")
        #expect(source.outcomes.withLock { $0.count == 3 && $0.values.allSatisfy { $0 == .done } })
        #expect(d.stats.deadLettered.load(ordering: .relaxed) == 1)
    }

    @Test func exhaustedRetriesAreDeadLettered() async throws {
        let transport = ScriptedTransport { _, _ in throw DeliveryFailure(.retryable(retryAfter: nil), status: 429, message: "throttled") }
        let sink = MemorySink()
        let d = Dispatcher(
            routes: [route([groupTarget("g")])], transport: transport, deadLetter: sink, settings: settings(attempts: 3), logger: quietLogger)
        try await d.run(sources: [ListSource([message("x", dataType: .text)])])
        #expect(transport.attempts.withLock { $0["x"] } == 3)
        #expect(sink.records.withLock { $0.first?.headers["wps-attempts"] } == "3")
    }

    @Test func unresolvableTemplateIsDeadLetteredWithoutSending() async throws {
        let transport = ScriptedTransport()
        let sink = MemorySink()
        let d = Dispatcher(
            routes: [route([groupTarget("g-{key}")])], transport: transport, deadLetter: sink, settings: settings(), logger: quietLogger)
        try await d.run(sources: [ListSource([message("no key", dataType: .text)])])
        #expect(transport.sent.withLock { $0.isEmpty })
        #expect(sink.records.withLock { $0.first?.headers["wps-error"]?.contains("{key}") } == true)
    }

    @Test func routeDeadLetterWinsOverGlobal() async throws {
        let transport = ScriptedTransport { _, _ in throw DeliveryFailure(.permanent, status: 404, message: "nope") }
        let global = MemorySink()
        let own = MemorySink()
        let d = Dispatcher(
            routes: [route([groupTarget("g")], deadLetter: own)], transport: transport, deadLetter: global, settings: settings(), logger: quietLogger)
        try await d.run(sources: [ListSource([message("x", dataType: .text)])])
        #expect(own.records.withLock { $0.count } == 1)
        #expect(global.records.withLock { $0.isEmpty })
    }

    @Test func failedDeadLetterWriteLeavesTheDeliveryUnacked() async throws {
        let transport = ScriptedTransport { _, _ in throw DeliveryFailure(.permanent, status: 400, message: "bad") }
        let d = Dispatcher(
            routes: [route([groupTarget("g")])], transport: transport, deadLetter: MemorySink(fail: true), settings: settings(), logger: quietLogger)
        let source = ListSource([message("x", dataType: .text)])
        try await d.run(sources: [source])
        guard case .failed = source.outcomes.withLock({ $0[0] }) else {
            Issue.record("expected a nack")
            return
        }
        #expect(d.stats.unsettled.load(ordering: .relaxed) == 1)
    }

    @Test func messageWithSeveralTargetsIsAckedOnceAllAreDone() async throws {
        let transport = ScriptedTransport()
        let d = Dispatcher(
            routes: [
                route([groupTarget("a"), groupTarget("b")]),
                Route(name: "r2", source: "src", condition: try RouteCondition("json.n gt 1"), targets: [groupTarget("c")]),
            ],
            transport: transport, deadLetter: nil, settings: settings(), logger: quietLogger)
        let source = ListSource([message(#"{"n":1}"#), message(#"{"n":2}"#)])
        try await d.run(sources: [source])
        let groups = transport.sent.withLock { $0.map { "\($0.target.recipient)" } }
        #expect(groups.count == 5)
        #expect(source.outcomes.withLock { $0.count } == 2)
    }

    @Test func unroutedMessagesAreAcked() async throws {
        let d = Dispatcher(
            routes: [Route(name: "r", source: "src", condition: try RouteCondition("key eq 'x'"), targets: [groupTarget("g")])],
            transport: ScriptedTransport(), deadLetter: nil, settings: settings(), logger: quietLogger)
        let source = ListSource([message("{}", key: "y")])
        try await d.run(sources: [source])
        #expect(source.outcomes.withLock { $0[0] } == .done)
        #expect(d.stats.unrouted.load(ordering: .relaxed) == 1)
    }

    @Test func backPressureStopsTheSource() async throws {
        let gate = AsyncStream<Void>.makeStream()
        let transport = ScriptedTransport { _, _ in for await _ in gate.stream { return } }
        let source = ListSource((0..<50).map { message("\($0)", dataType: .text) })
        let d = Dispatcher(
            routes: [route([groupTarget("g")], ordering: .none)], transport: transport, deadLetter: nil,
            settings: settings(maxInFlight: 5, concurrency: 2), logger: quietLogger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await d.run(sources: [source]) }
            // Wait (on a busy machine, as long as it takes) until the window is full...
            let deadline = ContinuousClock.now + .seconds(30)
            while source.emitted < 5, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            // ...then give a sixth emit every chance to slip through: it must keep waiting.
            try await Task.sleep(for: .milliseconds(100))
            #expect(source.emitted == 5)
            #expect(d.inFlight == 5)
            gate.continuation.finish()
            try await group.waitForAll()
        }
        #expect(transport.sent.withLock { $0.count } == 50)
    }

    @Test func shutdownTimeoutNacksWhatIsStillInFlight() async throws {
        // A send that never finishes; shutdown waits shutdownTimeout, then gives up on it.
        let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .seconds(600)) }
        let source = ListSource((0..<3).map { message("\($0)", dataType: .text) })
        let d = Dispatcher(
            routes: [route([groupTarget("g")])], transport: transport, deadLetter: nil, settings: settings(), logger: quietLogger)
        // Shut down once all three were taken and the first send is stuck.
        try await shutDownWhileSending(d, source, transport)
        let outcomes = source.outcomes.withLock { $0 }
        #expect(outcomes.count == 3)
        #expect(outcomes.values.allSatisfy { if case .failed = $0 { true } else { false } })
        #expect(source.finished)
    }
}

@Suite struct LoopPreventionTests {
    @Test func aMirroredEventIsNotSentBackToItsOwnHubUnlessTheRouteOptsIn() async throws {
        let transport = ScriptedTransport()
        let back = Route(name: "back", source: "src", targets: [TargetSpec(hub: Template(literal: "chat"), recipient: .group(try Template("g")))])
        var optIn = Route(name: "optin", source: "src", targets: [TargetSpec(hub: Template(literal: "chat"), recipient: .group(try Template("h")))])
        optIn.forwardMirrored = true
        let other = Route(name: "other", source: "src", targets: [TargetSpec(hub: Template(literal: "ops"), recipient: .group(try Template("g")))])
        let d = Dispatcher(routes: [back, optIn, other], transport: transport, deadLetter: nil, settings: settings(), logger: quietLogger)
        let mirrored = message("{}", headers: ["wps-mirrored-from": "chat"])
        try await d.run(sources: [ListSource([mirrored])])
        let sent = transport.sent.withLock { $0.map { $0.target.hub } }.sorted()
        // The opted-in route sent to chat; the plain one did not; ops is another hub.
        #expect(sent == ["chat", "ops"])
        #expect(d.stats.loopsPrevented.load(ordering: .relaxed) == 1)
    }
}
