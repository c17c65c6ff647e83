import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing

/// Scale-out (issue 21): replicas of the bridge in one consumer group split a topic's partitions.
///
/// Each scenario runs with librdkafka's default assignors (eager: every member gives up all its
/// partitions at each rebalance) and with `cooperative-sticky` (only moved partitions stop), and
/// prints the longest pause in deliveries, the time to deliver the rest and the duplicates, so
/// that the default can be chosen on figures (docs/kafka.md#replicas).
extension KafkaEndToEndTests {
    /// Three replicas on a topic of 12 partitions; one is killed (SIGKILL) mid-stream and another
    /// started. Every message arrives, each partition in order (a partition of the killed replica
    /// is read again from its last commit: its redelivered records are duplicates, counted and
    /// printed), and the group had split the topic before the kill.
    @Test(arguments: ["range,roundrobin", "cooperative-sticky"])
    func replicasSplitThePartitionsAndAKilledOneLosesNothing(strategy: String) async throws {
        let run = try await ReplicaRun(self, strategy: strategy, name: "kill")
        var replicas: [(dir: String, bridge: BridgeProcess)] = []
        for _ in 0..<3 {
            replicas.append(try run.start())
        }
        // The records come once the group has settled, so that the kill finds each replica with
        // partitions of its own (produced first, the 600 could arrive before the third joined,
        // and the killed one could be a replica without partitions: seen once for each protocol).
        let settled = await eventually(timeout: .seconds(60)) { replicas.allSatisfy { holdsPartitions($0.dir) } }
        let holding = replicas.filter { holdsPartitions($0.dir) }.count
        #expect(holding >= 2, "the group did not split the topic: \(holding) replica(s) with partitions")
        try await run.produce()
        var got = await collect(run.subscriber, count: 600)
        let killed = replicas[0]
        killed.bridge.kill()
        _ = await killed.bridge.exitStatus()
        let beforeKill = got.count
        replicas.append(try run.start())
        let rest = await run.drain(&got)
        let replacement = holdsPartitions(replicas.last!.dir)
        print(
            "kafka replica test (\(strategy)): 3 replicas, 12 partitions, \(settled ? "all 3" : "\(holding) of 3") with partitions before the records came; \(beforeKill) delivered before SIGKILL, \(rest.summary) after the kill; the replacement \(replacement ? "got partitions" : "got no partition yet")"
        )
        try await run.stop(replicas.dropFirst().map(\.bridge))
    }

    /// One replica reads the topic alone; two more join mid-stream (a scale-out, or a rolling
    /// deployment). Every message arrives once per partition order, the joiners take partitions,
    /// and the pause the rebalances cause is printed: the case incremental rebalancing is for.
    @Test(arguments: ["range,roundrobin", "cooperative-sticky"])
    func replicasJoiningMidStreamTakePartitionsAndLoseNothing(strategy: String) async throws {
        let run = try await ReplicaRun(self, strategy: strategy, name: "join")
        var replicas = [try run.start()]
        let alone = await eventually(timeout: .seconds(60)) { holdsPartitions(replicas[0].dir) }
        #expect(alone, "the first replica got no partition:\n\(log(replicas[0].dir).suffix(3000))")
        try await run.produce()
        var got = await collect(run.subscriber, count: 600)
        let beforeJoin = got.count
        let joined = ContinuousClock.now
        replicas.append(try run.start())
        replicas.append(try run.start())
        let rest = await run.drain(&got)
        let whileReading = replicas.dropFirst().filter { holdsPartitions($0.dir) }.count
        // Each joiner must get partitions: within the stream or, if the first replica read it
        // all before the group rebalanced, soon after.
        let split = await eventually(timeout: .seconds(60)) { replicas.dropFirst().allSatisfy { holdsPartitions($0.dir) } }
        let splitAfter = ContinuousClock.now - joined
        #expect(
            split,
            "a joiner got no partition within 60 s of the stream's end:\n\(replicas.map { log($0.dir).suffix(2000) }.joined(separator: "\n---\n"))")
        print(
            "kafka replica join test (\(strategy)): 1 replica, 12 partitions; \(beforeJoin) delivered before 2 more joined, \(rest.summary) after they joined; \(whileReading) of 2 joiners got partitions while the records were read, both by \(String(format: "%.1f", splitAfter / .seconds(1))) s after they joined"
        )
        try await run.stop(replicas.map(\.bridge))
    }

    /// Whether the replica in `dir` was assigned at least one partition.
    private func holdsPartitions(_ dir: String) -> Bool {
        log(dir).split(separator: "\n").contains { $0.contains("kafka partitions assigned") && !$0.contains(#""wps.partitions":"[]""#) }
    }
}

/// A broker, a hub, a topic of 12 partitions and 3,000 records `{"p": partition, "n": number}`,
/// and slow replicas (one send at a time, 4 in flight) so that whatever happens mid-stream does.
private struct ReplicaRun {
    let test: KafkaEndToEndTests
    let strategy: String
    let broker: KafkaBroker
    let hub: HubProcess
    let subscriber: TestWebSocket
    let yaml: String
    let topic = "replicas"
    let partitions = 12
    let count = 3000

    init(_ test: KafkaEndToEndTests, strategy: String, name: String) async throws {
        self.test = test
        self.strategy = strategy
        broker = try await KafkaBroker()
        hub = try await HubProcess()
        try await KafkaTool.create(broker.brokers, topic: topic, partitions: partitions)
        subscriber = try await hub.subscriber(hub: "chat", group: "stream")
        yaml = """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
            \(test.kafkaSource(broker, topic: topic, group: "g-\(name)-\(strategy.prefix(5))"))
                  partition.assignment.strategy: "\(strategy)"
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: stream}
            delivery:
              concurrency: 1
              maxInFlight: 4
            """
    }

    func start() throws -> (dir: String, bridge: BridgeProcess) {
        let dir = try TestEnvironment.temporaryDirectory()
        return (dir, try test.startBridge(yaml, in: dir))
    }

    func produce() async throws {
        try await KafkaTool.produce(
            broker.brokers, topic: topic, (0..<count).map { i in ["value": #"{"p":\#(i % partitions),"n":\#(i)}"#, "partition": i % partitions] })
    }

    /// Reads until every record arrived (or 60 s pass without one), then checks that none is
    /// missing and that each partition's records came in order (their first arrivals).
    func drain(_ got: inout [JSONValue]) async -> Drained {
        let from = ContinuousClock.now
        var last = from
        var longestPause = Duration.zero
        while Set(test.numbers(got).map(\.n)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(60)) {
            got.append(m)
            let now = ContinuousClock.now
            longestPause = max(longestPause, now - last)
            last = now
        }
        let received = test.numbers(got)
        let distinct = Set(received.map(\.n))
        #expect(distinct.count == count, "missing: \(Set(0..<count).subtracting(distinct).sorted().prefix(20))")
        var seen: Set<Int> = []
        let firsts = received.filter { seen.insert($0.n).inserted }
        for (p, items) in Dictionary(grouping: firsts, by: \.p) {
            #expect(items.map(\.n) == Array(stride(from: p, to: count, by: partitions)), "partition \(p): \(items.map(\.n).prefix(20))")
        }
        return Drained(
            received: received.count, duplicates: received.count - distinct.count, of: count, rest: last - from, longestPause: longestPause)
    }

    func stop(_ bridges: [BridgeProcess]) async throws {
        for bridge in bridges {
            bridge.terminate()
            #expect(await bridge.exitStatus() == 0)
        }
        await broker.stop()
        await hub.stop()
    }
}

private struct Drained {
    let received: Int
    let duplicates: Int
    let of: Int
    let rest: Duration
    let longestPause: Duration

    var summary: String {
        "\(received) in all, \(duplicates) duplicates of \(of); the rest in \(seconds(rest)) s, the longest pause \(seconds(longestPause)) s"
    }

    private func seconds(_ d: Duration) -> String { String(format: "%.1f", d / .seconds(1)) }
}
