import Foundation
import NIOCore
import Synchronization
import Testing
import WebPubSubProtocol

@testable import BridgeCore

/// `batch:` routes through the whole dispatcher: many messages per send, order kept, each
/// message settled on its own.
@Suite struct BatchingDispatcherTests {
    func batched(
        _ targets: [TargetSpec], ordering: Ordering = .strict, maxMessages: Int = 100, maxBytes: Int = 1 << 20,
        maxDelay: Duration = .milliseconds(5), conflate: String? = nil, deadLetter: (any SinkAdapter)? = nil
    ) throws -> Route {
        var r = route(targets, ordering: ordering, deadLetter: deadLetter)
        r.batch = BatchSettings(maxMessages: maxMessages, maxBytes: maxBytes, maxDelay: maxDelay)
        r.conflate = try conflate.map { try Template($0) }
        return r
    }

    /// The elements of a batch's JSON array, each as compact JSON text.
    func elements(_ body: String) throws -> [String] {
        let array = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8), options: [.fragmentsAllowed]) as? [Any])
        return try array.map { element in
            if let s = element as? String { return "\"\(s)\"" }
            return String(decoding: try JSONSerialization.data(withJSONObject: element, options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
        }
    }

    @Test func aStrictLaneSendsArraysInOrderAndSettlesEveryMessage() async throws {
        let messages = (0..<250).map { message(#"{"n":\#($0)}"#) }
        let source = ListSource(messages)
        // Slow sends: messages pile up behind the one batch in flight.
        let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .milliseconds(2)) }
        let d = Dispatcher(
            routes: [try batched([groupTarget("g")], maxMessages: 50)], transport: transport, deadLetter: nil, settings: settings(maxInFlight: 300),
            logger: quietLogger)
        try await d.run(sources: [source])
        let sent = transport.sent.withLock { $0 }
        let all = try sent.flatMap { try elements($0.body) }
        #expect(all == (0..<250).map { #"{"n":\#($0)}"# }, "every message once, in order")
        #expect(sent.count < 250 && sent.allSatisfy { (try? elements($0.body).count) ?? 0 <= 50 })
        #expect(transport.maxRunning == 1, "one batch in flight per strict lane")
        for s in sent {
            #expect(s.target.metadata.first { $0.key == "batch" }?.value == String((try? elements(s.body).count) ?? -1))
        }
        #expect(d.stats.sends.load(ordering: .relaxed) == sent.count)
        #expect(d.stats.delivered.load(ordering: .relaxed) == 250)
        #expect(source.outcomes.withLock { $0.count == 250 && $0.values.allSatisfy { $0 == .done } })
    }

    @Test func targetsAreBatchedApartAndTextBecomesStrings() async throws {
        var messages: [Message] = []
        for i in 0..<40 { messages.append(message("t\(i) \"q\"", dataType: .text, key: i % 2 == 0 ? "a" : "b")) }
        let transport = ScriptedTransport()
        let d = Dispatcher(
            routes: [try batched([groupTarget("g-{key}")], maxDelay: .milliseconds(20))], transport: transport, deadLetter: nil,
            settings: settings(), logger: quietLogger)
        try await d.run(sources: [ListSource(messages)])
        let sent = transport.sent.withLock { $0 }
        for (group, parity) in [("g-a", 0), ("g-b", 1)] {
            let bodies = try sent.filter { $0.target.recipient == .group(group) }.flatMap { try elements($0.body) }
            #expect(bodies == stride(from: parity, to: 40, by: 2).map { "\"t\($0) \"q\"\"" })
        }
        #expect(sent.allSatisfy { $0.target.dataType == nil }, "the array is sent as JSON")
    }

    @Test func conflationKeepsTheNewestPerKeyAndSettlesTheRest() async throws {
        let symbols = ["A", "B", "C"]
        let messages = (0..<30).map { i in message(#"{"symbol":"\#(symbols[i % 3])","n":\#(i)}"#) }
        let source = ListSource(messages)
        let transport = ScriptedTransport()
        let d = Dispatcher(
            routes: [try batched([groupTarget("g")], maxDelay: .milliseconds(200), conflate: "{json.symbol}")], transport: transport,
            deadLetter: nil, settings: settings(), logger: quietLogger)
        try await d.run(sources: [source])
        let sent = transport.sent.withLock { $0 }
        let all = try sent.flatMap { try elements($0.body) }
        // Every message arrived within maxDelay: one batch, the newest per symbol, in their order.
        #expect(sent.count == 1)
        #expect(all == [#"{"n":27,"symbol":"A"}"#, #"{"n":28,"symbol":"B"}"#, #"{"n":29,"symbol":"C"}"#])
        #expect(d.stats.conflated.load(ordering: .relaxed) == 27)
        #expect(d.stats.delivered.load(ordering: .relaxed) == 3)
        #expect(source.outcomes.withLock { $0.count == 30 && $0.values.allSatisfy { $0 == .done } })
    }

    @Test func aBatchThatFailsForGoodIsDeadLetteredMessageByMessage() async throws {
        let sink = MemorySink()
        // Any array holding message 7 is refused for good; the others go through.
        let transport = ScriptedTransport { body, _ in
            if body.contains(#""n":7"#) { throw DeliveryFailure(.permanent, status: 400, message: "Bad Request") }
        }
        let messages = (0..<20).map { i in message(#"{"n":\#(i)}"#, key: "K\(i)", origin: Origin(source: "src", position: "\(i)")) }
        let source = ListSource(messages)
        let d = Dispatcher(
            routes: [try batched([groupTarget("g")], maxMessages: 5)], transport: transport, deadLetter: sink, settings: settings(),
            logger: quietLogger)
        try await d.run(sources: [source])
        let records = sink.records.withLock { $0 }
        let failedBatch = try #require(transport.attempts.withLock { $0.keys.first { $0.contains(#""n":7"#) } })
        let members = try elements(failedBatch)
        #expect(records.map { String(buffer: $0.payload) } == members, "each message of the failed batch, in order, as it came")
        #expect(records.allSatisfy { $0.headers["wps-batch-size"] == String(members.count) && $0.headers["wps-status"] == "400" })
        #expect(records.map(\.key) == members.map { m in "K" + m.filter(\.isNumber) })
        #expect(d.stats.delivered.load(ordering: .relaxed) == 20 - members.count)
        #expect(source.outcomes.withLock { $0.count == 20 && $0.values.allSatisfy { $0 == .done } })
    }

    @Test func aFailedBatchIsRetriedWhole() async throws {
        let transport = ScriptedTransport { _, attempt in
            if attempt == 1 { throw DeliveryFailure(.retryable(retryAfter: nil), status: 503, message: "busy") }
        }
        let d = Dispatcher(
            routes: [try batched([groupTarget("g")], maxMessages: 10)], transport: transport, deadLetter: nil, settings: settings(),
            logger: quietLogger)
        try await d.run(sources: [ListSource((0..<30).map { message("\($0)") })])
        let sent = transport.sent.withLock { $0 }
        #expect(try sent.flatMap { try elements($0.body) } == (0..<30).map { "\($0)" })
        #expect(d.stats.retried.load(ordering: .relaxed) == sent.count, "each batch failed once and went again whole")
    }

    @Test func anUnresolvableTargetGoesAloneToTheDeadLetters() async throws {
        let sink = MemorySink()
        let transport = ScriptedTransport()
        let d = Dispatcher(
            routes: [try batched([groupTarget("g-{json.room}")])], transport: transport, deadLetter: sink, settings: settings(),
            logger: quietLogger)
        let source = ListSource([message(#"{"room":"a"}"#), message(#"{"no":"room"}"#), message(#"{"room":"a","n":2}"#)])
        try await d.run(sources: [source])
        #expect(sink.records.withLock { $0.map { String(buffer: $0.payload) } } == [#"{"no":"room"}"#])
        #expect(sink.records.withLock { $0.first?.headers["wps-batch-size"] } == nil)
        #expect(try transport.sent.withLock { $0 }.flatMap { try elements($0.body) } == [#"{"room":"a"}"#, #"{"n":2,"room":"a"}"#])
    }

    @Test func maxBytesSplitsBatches() async throws {
        let transport = ScriptedTransport()
        let payload = String(repeating: "x", count: 400)
        let d = Dispatcher(
            routes: [try batched([groupTarget("g")], maxBytes: 1024, maxDelay: .milliseconds(50))], transport: transport, deadLetter: nil,
            settings: settings(), logger: quietLogger)
        try await d.run(sources: [ListSource((0..<10).map { _ in message(payload, dataType: .text) })])
        let sent = transport.sent.withLock { $0 }
        // An element costs 403 bytes: two fit in 1 KB.
        #expect(sent.map { try! elements($0.body).count } == [2, 2, 2, 2, 2])
        #expect(sent.allSatisfy { $0.body.utf8.count <= 1024 })
    }

    @Test func unorderedRoutesBatchPerTargetToo() async throws {
        let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .milliseconds(1)) }
        let d = Dispatcher(
            routes: [try batched([groupTarget("g-{key}")], ordering: .none)], transport: transport, deadLetter: nil,
            settings: settings(maxInFlight: 500),
            logger: quietLogger)
        let messages = (0..<400).map { i in message("\(i)", key: "k\(i % 4)") }
        try await d.run(sources: [ListSource(messages)])
        let sent = transport.sent.withLock { $0 }
        #expect(try sent.flatMap { try elements($0.body) }.sorted() == (0..<400).map { "\($0)" }.sorted())
        #expect(sent.count < 400)
    }

    @Test func shutdownLeavesABatchInFlightUnacknowledged() async throws {
        let transport = ScriptedTransport { _, _ in try await Task.sleep(for: .seconds(600)) }
        let source = ListSource((0..<6).map { message("\($0)") })
        let d = Dispatcher(
            routes: [try batched([groupTarget("g")], maxMessages: 3, conflate: "{json}")], transport: transport, deadLetter: nil,
            settings: settings(), logger: quietLogger)
        try await shutDownWhileSending(d, source, transport)
        let outcomes = source.outcomes.withLock { $0 }
        #expect(outcomes.count == 6)
        #expect(outcomes.values.allSatisfy { if case .failed = $0 { true } else { false } }, "nothing acknowledged that was not sent")
        #expect(d.inFlight == 0)
    }
}
