import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing

/// Scale-out (issue 21): replicas of the bridge in one consumer group split a topic's partitions.
extension KafkaEndToEndTests {
    /// Three replicas on a topic of 12 partitions; one is killed (SIGKILL) mid-stream and another
    /// started. Every message arrives, each partition in order (a partition of the killed replica
    /// is read again from its last commit: its redelivered records are duplicates, counted and
    /// printed), and each replica had partitions of its own.
    ///
    /// Run with librdkafka's default assignors (eager: every member gives up all its partitions
    /// at each rebalance) and with `cooperative-sticky` (only moved partitions stop); the longest
    /// pause in deliveries after the kill and the duplicates are printed for each.
    @Test(arguments: ["range,roundrobin", "cooperative-sticky"])
    func replicasSplitThePartitionsAndAKilledOneLosesNothing(strategy: String) async throws {
        let broker = try await KafkaBroker()
        let hub = try await HubProcess()
        let topic = "replicas"
        let partitions = 12
        let count = 3000
        try await KafkaTool.create(broker.brokers, topic: topic, partitions: partitions)
        let subscriber = try await hub.subscriber(hub: "chat", group: "stream")
        // Slow replicas (one send at a time, 4 in flight), so that the kill comes mid-stream.
        let yaml = """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
            \(kafkaSource(broker, topic: topic, group: "g-replicas-\(strategy.prefix(5))"))
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
        var replicas: [(dir: String, bridge: BridgeProcess)] = []
        for _ in 0..<3 {
            let dir = try TestEnvironment.temporaryDirectory()
            replicas.append((dir, try startBridge(yaml, in: dir)))
        }
        // The records come once the group has settled, so that the kill finds each replica with
        // partitions of its own (produced first, the 600 could arrive before the third joined,
        // and the killed one could be a replica without partitions: seen once for each protocol).
        let settled = await eventually(timeout: .seconds(60)) { replicas.allSatisfy { holdsPartitions($0.dir) } }
        let holding = replicas.filter { holdsPartitions($0.dir) }.count
        #expect(holding >= 2, "the group did not split the topic: \(holding) replica(s) with partitions")
        try await KafkaTool.produce(
            broker.brokers, topic: topic, (0..<count).map { i in ["value": #"{"p":\#(i % partitions),"n":\#(i)}"#, "partition": i % partitions] })
        var got = await collect(subscriber, count: 600)
        let killed = replicas[0]
        killed.bridge.kill()
        _ = await killed.bridge.exitStatus()
        let beforeKill = got.count
        let killedAt = ContinuousClock.now
        let dir = try TestEnvironment.temporaryDirectory()
        replicas.append((dir, try startBridge(yaml, in: dir)))
        var last = killedAt
        var longestPause = Duration.zero
        while Set(numbers(got).map(\.n)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(60)) {
            got.append(m)
            let now = ContinuousClock.now
            longestPause = max(longestPause, now - last)
            last = now
        }
        let drained = last - killedAt
        let received = numbers(got)
        let distinct = Set(received.map(\.n))
        #expect(distinct.count == count, "missing: \(Set(0..<count).subtracting(distinct).sorted().prefix(20))")
        // Order per partition: the first arrival of each record, partition by partition.
        var seen: Set<Int> = []
        let firsts = received.filter { seen.insert($0.n).inserted }
        for (p, items) in Dictionary(grouping: firsts, by: \.p) {
            #expect(items.map(\.n) == Array(stride(from: p, to: count, by: partitions)), "partition \(p): \(items.map(\.n).prefix(20))")
        }
        let lateLog = (try? String(contentsOfFile: replicas.last!.dir + "/bridge.log", encoding: .utf8)) ?? ""
        let lateJoined = lateLog.contains("kafka partitions assigned")
        let duplicates = received.count - distinct.count
        print(
            "kafka replica test (\(strategy)): 3 replicas, 12 partitions, \(settled ? "all 3" : "\(holding) of 3") with partitions before the records came; \(beforeKill) delivered before SIGKILL, \(received.count) in all, \(duplicates) duplicates of \(count); the rest \(seconds(drained)) s after the kill, the longest pause \(seconds(longestPause)) s; the replacement \(lateJoined ? "got partitions" : "got no partition yet")"
        )
        for (_, bridge) in replicas.dropFirst() {
            bridge.terminate()
            #expect(await bridge.exitStatus() == 0)
        }
        await broker.stop()
        await hub.stop()
    }

    /// Whether the replica in `dir` was assigned at least one partition.
    private func holdsPartitions(_ dir: String) -> Bool {
        log(dir).split(separator: "\n").contains { $0.contains("kafka partitions assigned") && !$0.contains(#""wps.partitions":"[]""#) }
    }

    private func seconds(_ d: Duration) -> String { String(format: "%.1f", d / .seconds(1)) }
}
