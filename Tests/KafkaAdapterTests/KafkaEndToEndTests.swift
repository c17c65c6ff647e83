import BridgeJSON
import BridgeTestSupport
import Foundation
import Synchronization
import Testing

/// `wps-bridge run` with Kafka sources and dead letters, against a real Kafka-protocol broker
/// (Tansu) and `wps-bridge hub`, checked by an independent Kafka client (confluent-kafka) and a
/// WebSocket subscriber of the hub.
@Suite(.serialized) struct KafkaEndToEndTests {
    /// Client settings that make group joins take seconds rather than half a minute on Tansu,
    /// and notice topics created after the bridge started.
    static let fastGroup = """
              session.timeout.ms: 6000
              heartbeat.interval.ms: 500
              topic.metadata.refresh.interval.ms: 1000
        """

    func startBridge(_ yaml: String, in dir: String) throws -> BridgeProcess { try BridgeProcess(yaml, in: dir) }

    func log(_ dir: String) -> String { (try? String(contentsOfFile: dir + "/bridge.log", encoding: .utf8)) ?? "" }

    func collect(_ socket: TestWebSocket, count: Int, idle: Duration = .seconds(30)) async -> [JSONValue] {
        await socket.messages(count, idle: idle)
    }

    /// The `{"p":..,"n":..}` payloads of received messages.
    func numbers(_ messages: [JSONValue]) -> [(p: Int, n: Int)] {
        messages.compactMap { m in
            guard case .number(let p)? = m["data"]?["p"], case .number(let n)? = m["data"]?["n"], let p = Int(p), let n = Int(n) else { return nil }
            return (p, n)
        }
    }

    func kafkaSource(_ broker: KafkaBroker, topic: String, group: String, extra: String = "") -> String {
        """
          - name: events
            type: kafka
            brokers: \(broker.brokers)
            topics: [\(topic)]
            group: \(group)
            startFrom: earliest
        \(extra)    librdkafka:
        \(Self.fastGroup)
        """
    }

    /// Answers what a `RecordingServer` refuses or takes: every send is refused with one status
    /// until `open()`, then recorded.
    final class Gate: Sendable {
        let refusing = Atomic<Bool>(true)
        let refused = Atomic<Int>(0)
        let accepted = Lines()
        func open() { refusing.store(false, ordering: .relaxed) }
    }

    /// A REST endpoint that refuses every request (or every send, `postsOnly`) with `status`
    /// and `body` until its gate opens.
    func gatedServer(status: Int, _ body: String, postsOnly: Bool = false) async throws -> (RecordingServer, Gate) {
        let gate = Gate()
        let server = RecordingServer(responder: { request in
            if postsOnly, request.method != "POST" { return nil }
            if gate.refusing.load(ordering: .relaxed) {
                gate.refused.add(1, ordering: .relaxed)
                return .init(status: status, body: body)
            }
            gate.accepted.append(request.bodyText)
            return nil
        })
        try await server.start()
        return (server, gate)
    }

    /// Web PubSub refusing the bridge's key (401) is the route's condition: while it lasts
    /// nothing is committed, nothing dead-lettered; once the key is taken every message is
    /// delivered once and the offsets are committed after delivery.
    @Test func aRefusedKeyCommitsNothingUntilMessagesAreDelivered() async throws {
        let broker = try await KafkaBroker()
        let dir = try TestEnvironment.temporaryDirectory()
        let topic = "refused"
        try await KafkaTool.create(broker.brokers, topic: topic, partitions: 2)
        let count = 40
        try await KafkaTool.produce(
            broker.brokers, topic: topic, (0..<count).map { i in ["value": #"{"p":\#(i % 2),"n":\#(i)}"#, "partition": i % 2] })
        let (server, gate) = try await gatedServer(status: 401, #"{"code":"Unauthorized","message":"invalid token"}"#)
        let accepted = gate.accepted
        let bridge = try startBridge(
            """
            webpubsub:
              connectionString: "\(server.connectionString)"
            sources:
            \(kafkaSource(broker, topic: topic, group: "g-refused"))
            deadLetter: {type: file, path: dead.ndjson}
            delivery:
              retry: {maxAttempts: 3, initialBackoff: 20ms, maxBackoff: 200ms}
            routes:
              - from: events
                to:
                  - {hub: chat, group: orders}
            """, in: dir)
        #expect(await eventually(timeout: .seconds(60)) { bridge.log.contains("refuses the bridge (401") }, "\(bridge.logTail)")
        try await Task.sleep(for: .seconds(3))
        let during = try await KafkaTool.committed(broker.brokers, group: "g-refused", topic: topic, partitions: 2)
        #expect(during.values.allSatisfy { $0 <= 0 }, "committed while refused: \(during)")
        gate.open()
        #expect(await eventually(timeout: .seconds(60)) { accepted.all.count >= count }, "\(bridge.logTail)")
        #expect(
            await eventually(timeout: .seconds(30)) {
                (try? await KafkaTool.committed(broker.brokers, group: "g-refused", topic: topic, partitions: 2)).map { $0.values.reduce(0, +) }
                    == count
            }, "offsets after delivery")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        #expect(accepted.all.count == count, "each message accepted once")
        #expect(Set(accepted.all).count == count)
        #expect(!FileManager.default.fileExists(atPath: dir + "/dead.ndjson"), "nothing dead-lettered")
        await server.stop()
    }

    @Test func messagesOfSeveralPartitionsArriveInOrderPerPartition() async throws {
        let broker = try await KafkaBroker()
        let hub = try await HubProcess()
        let dir = try TestEnvironment.temporaryDirectory()
        let topic = "orders"
        try await KafkaTool.create(broker.brokers, topic: topic, partitions: 4)
        let count = 200
        try await KafkaTool.produce(
            broker.brokers, topic: topic, (0..<count).map { i in ["value": #"{"p":\#(i % 4),"n":\#(i)}"#, "key": "k\(i % 4)", "partition": i % 4] })
        let subscriber = try await hub.subscriber(hub: "chat", group: "orders")
        let bridge = try startBridge(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
            \(kafkaSource(broker, topic: topic, group: "g-order"))
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: orders}
            """, in: dir)
        let got = await collect(subscriber, count: count)
        #expect(got.count == count, "bridge log:\n\(log(dir))")
        let byPartition = Dictionary(grouping: numbers(got), by: \.p)
        #expect(byPartition.keys.count == 4)
        for (p, items) in byPartition {
            #expect(items.map(\.n) == items.map(\.n).sorted(), "partition \(p) out of order")
            #expect(items.count == count / 4)
        }
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await broker.stop()
        await hub.stop()
    }

    /// `count` records `{"p","n"}` over 4 partitions, a hub with a subscriber of group `stream`,
    /// and the config of a bridge (2 sends at once, 8 in flight) that reads them into it.
    func streamOf(_ count: Int, topic: String, group: String) async throws -> (KafkaBroker, HubProcess, String, TestWebSocket, String) {
        let broker = try await KafkaBroker()
        let hub = try await HubProcess()
        let dir = try TestEnvironment.temporaryDirectory()
        try await KafkaTool.create(broker.brokers, topic: topic, partitions: 4)
        try await KafkaTool.produce(
            broker.brokers, topic: topic, (0..<count).map { i in ["value": #"{"p":\#(i % 4),"n":\#(i)}"#, "partition": i % 4] })
        let subscriber = try await hub.subscriber(hub: "chat", group: "stream")
        let yaml = """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
            \(kafkaSource(broker, topic: topic, group: group))
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: stream}
            delivery:
              concurrency: 2
              maxInFlight: 8
            """
        return (broker, hub, dir, subscriber, yaml)
    }

    @Test func aKilledBridgeLosesNothingWhenStartedAgain() async throws {
        let count = 2000
        let (broker, hub, dir, subscriber, yaml) = try await streamOf(count, topic: "stream", group: "g-kill")
        let first = try startBridge(yaml, in: dir)
        var got = await collect(subscriber, count: 300)
        first.kill()
        _ = await first.exitStatus()
        let beforeKill = got.count
        // Up to the kill, with the partitions paused and resumed as the dispatcher filled up,
        // every partition arrived in order and without gaps.
        for (p, items) in Dictionary(grouping: numbers(got), by: \.p) {
            let ns = items.map(\.n)
            #expect(ns == ns.sorted() && ns == Array(stride(from: p, to: p + 4 * ns.count, by: 4)), "partition \(p): \(ns.prefix(30))")
        }
        let second = try startBridge(yaml, in: dir)
        // The killed consumer holds its partitions until its session times out (6 s), then the
        // new one reads from the last committed offsets.
        while Set(numbers(got).map(\.n)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(40)) {
            got.append(m)
        }
        let distinct = Set(numbers(got).map(\.n))
        #expect(distinct.count == count, "missing: \(Set(0..<count).subtracting(distinct).sorted().prefix(20)); log:\n\(log(dir).suffix(4000))")
        let duplicates = got.count - distinct.count
        print("kafka kill test: \(beforeKill) delivered before SIGKILL, \(got.count) in all, \(duplicates) duplicates of \(count)")
        second.terminate()
        #expect(await second.exitStatus() == 0)
        await broker.stop()
        await hub.stop()
    }

    @Test func aStoppedBridgeRepeatsNothingWhenStartedAgain() async throws {
        let count = 2000
        let (broker, hub, dir, subscriber, yaml) = try await streamOf(count, topic: "graceful", group: "g-term")
        let first = try startBridge(yaml, in: dir)
        var got = await collect(subscriber, count: 300)
        // SIGTERM mid-stream: intake stops, in-flight sends finish, offsets are committed.
        first.terminate()
        #expect(await first.exitStatus() == 0, "log:\n\(log(dir).suffix(3000))")
        // What the first run sent after the 300 (it drained its in-flight sends) is here too.
        while let m = await subscriber.expect(type: "message", timeout: .seconds(2)) { got.append(m) }
        let beforeRestart = got.count
        let second = try startBridge(yaml, in: dir)
        while Set(numbers(got).map(\.n)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(40)) {
            got.append(m)
        }
        let distinct = Set(numbers(got).map(\.n))
        #expect(distinct.count == count, "missing: \(Set(0..<count).subtracting(distinct).sorted().prefix(20)); log:\n\(log(dir).suffix(4000))")
        #expect(got.count == count, "a graceful stop commits what was delivered: \(got.count - distinct.count) repeated")
        print("kafka SIGTERM test: \(beforeRestart) delivered by the first run, \(got.count) in all, \(got.count - distinct.count) repeated")
        second.terminate()
        #expect(await second.exitStatus() == 0)
        await broker.stop()
        await hub.stop()
    }

    @Test func aMessageWhoseDeadLetterFailedIsReadAgainOnceTheSinkWorks() async throws {
        let broker = try await KafkaBroker()
        let hub = try await HubProcess()
        let dir = try TestEnvironment.temporaryDirectory()
        try await KafkaTool.create(broker.brokers, topic: "rewind", partitions: 1)
        try await KafkaTool.produce(
            broker.brokers, topic: "rewind",
            [
                ["value": #"{"n":1}"#, "key": "a"],
                // No key: {key} cannot resolve, so it is dead-lettered; that broker is down.
                ["value": #"{"n":2}"#],
                ["value": #"{"n":3}"#, "key": "a"],
            ])
        let subscriber = try await hub.subscriber(hub: "chat", group: "room-a")
        let deadPort = try TestEnvironment.freePort()
        let yaml = """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
            \(kafkaSource(broker, topic: "rewind", group: "g-rewind"))
            routes:
              - from: events
                to:
                  - {hub: chat, group: "room-{key}"}
            deadLetter: {type: kafka, brokers: "127.0.0.1:\(deadPort)", topic: dead, deliveryTimeout: 1s}
            """
        let first = try startBridge(yaml, in: dir)
        let got = await collect(subscriber, count: 2)
        #expect(got.map { $0["data"]?["n"] } == [.number("1"), .number("3")], "log:\n\(log(dir).suffix(3000))")
        // The dead letter cannot be written: the partition is read again from it, with backoff.
        #expect(await eventually { log(dir).contains("read again from a message that could not be settled") }, "\(log(dir).suffix(3000))")
        let deadBroker = try await KafkaBroker(port: deadPort)
        let dead = try await KafkaTool.consume(deadBroker.brokers, topic: "dead", count: 1, timeout: 60, linger: 3)
        #expect(dead.map(\.value) == [#"{"n":2}"#], "written once, when its sink was back")
        // Everything is settled now, so the commit moved past it: a restart reads nothing again.
        _ = subscriber.drain()
        try await Task.sleep(for: .seconds(2))
        first.terminate()
        #expect(await first.exitStatus() == 0)
        _ = subscriber.drain()
        let second = try startBridge(yaml, in: dir)
        #expect(await subscriber.expect(type: "message", timeout: .seconds(12)) == nil, "nothing is read again after a restart")
        second.terminate()
        #expect(await second.exitStatus() == 0)
        await deadBroker.stop()
        await broker.stop()
        await hub.stop()
    }

    @Test func undeliverableMessagesGoToTheDeadLetterTopicAndTheStreamGoesOn() async throws {
        let broker = try await KafkaBroker()
        let hub = try await HubProcess()
        let dir = try TestEnvironment.temporaryDirectory()
        try await KafkaTool.create(broker.brokers, topic: "in", partitions: 1)
        try await KafkaTool.produce(
            broker.brokers, topic: "in",
            [
                ["value": #"{"n":1}"#, "key": "a"],
                // No key: the target's group template {key} cannot resolve.
                ["value": #"{"n":2}"#, "headers": ["trace": "t-2"]],
                // Binary, not UTF-8: the hub refuses it with 400 where a route sends it as text.
                ["value_hex": "fffe00", "key": "bad"],
                ["value": #"{"n":4}"#, "key": "a"],
            ])
        let subscriber = try await hub.subscriber(hub: "chat", group: "room-a")
        let bridge = try startBridge(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
            \(kafkaSource(broker, topic: "in", group: "g-dlq"))
            routes:
              - from: events
                to:
                  - {hub: chat, group: "room-{key}"}
              - from: events
                where: "key eq 'bad'"
                to:
                  - {hub: chat, group: text-only, dataType: text}
            deadLetter:
              type: kafka
              brokers: \(broker.brokers)
              topic: dead-letters
            """, in: dir)
        let got = await collect(subscriber, count: 2)
        #expect(got.map { $0["data"]?["n"] } == [.number("1"), .number("4")], "log:\n\(log(dir))")
        let dead = try await KafkaTool.consume(broker.brokers, topic: "dead-letters", count: 2)
        #expect(dead.count == 2)
        let unresolved = try #require(dead.first { $0.value == #"{"n":2}"# })
        #expect(unresolved.key == nil)
        #expect(unresolved.headers["trace"] == "t-2")
        #expect(unresolved.headers["wps-error"]?.contains("{key}") == true)
        #expect(unresolved.headers["wps-source"] == "events/in[0]@1")
        let refused = try #require(dead.first { $0.key == "bad" })
        #expect(refused.headers["wps-data-type"] == "binary")
        #expect(refused.headers["wps-status"] == "400")
        #expect(refused.headers["wps-source"] == "events/in[0]@2")
        #expect(refused.headers["wps-target"]?.contains("text-only") == true)
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await broker.stop()
        await hub.stop()
    }

    @Test func aBrokerThatStartsLaterIsWaitedFor() async throws {
        let port = try TestEnvironment.freePort()
        let hub = try await HubProcess()
        let dir = try TestEnvironment.temporaryDirectory()
        let subscriber = try await hub.subscriber(hub: "chat", group: "late")
        let bridge = try startBridge(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: events
                type: kafka
                brokers: 127.0.0.1:\(port)
                topics: [late]
                group: g-late
                startFrom: earliest
                librdkafka:
            \(Self.fastGroup)
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: late}
            """, in: dir)
        // The bridge is up, the broker is not: it says so and keeps trying.
        #expect(await eventually(timeout: .seconds(20)) { log(dir).contains("brokers") && log(dir).contains("down") }, "log:\n\(log(dir))")
        #expect(bridge.isRunning)
        let broker = try await KafkaBroker(port: port)
        try await KafkaTool.create(broker.brokers, topic: "late", partitions: 2)
        try await KafkaTool.produce(broker.brokers, topic: "late", [["value": #"{"hello":"late"}"#]])
        let got = await collect(subscriber, count: 1, idle: .seconds(60))
        #expect(got.first?["data"]?["hello"] == .string("late"), "log:\n\(log(dir))")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await broker.stop()
        await hub.stop()
    }
}
