import BridgeJSON
import BridgeTestSupport
import Foundation
import Synchronization
import Testing

/// `batch:` routes from Kafka (issue 20).
extension KafkaEndToEndTests {
    /// A `batch:` route: partitions keep their order across batches (one batch in flight per
    /// partition), and a bridge killed while its batches are refused again and again loses
    /// nothing: no offset is committed before the batch that carried it was accepted.
    @Test func batchesKeepPartitionOrderAndAreCommittedOnlyOnceAccepted() async throws {
        let broker = try await KafkaBroker()
        let dir = try TestEnvironment.temporaryDirectory()
        let topic = "batched"
        let count = 400
        try await KafkaTool.create(broker.brokers, topic: topic, partitions: 4)
        try await KafkaTool.produce(
            broker.brokers, topic: topic, (0..<count).map { i in ["value": #"{"p":\#(i % 4),"n":\#(i)}"#, "partition": i % 4] })
        let (server, gate) = try await gatedServer(status: 503, #"{"code":"ServiceUnavailable","message":"try later"}"#, postsOnly: true)
        let accepted = gate.accepted
        let yaml = """
            webpubsub:
              connectionString: "\(server.connectionString)"
            sources:
            \(kafkaSource(broker, topic: topic, group: "g-batched"))
            deadLetter: {type: file, path: dead.ndjson}
            delivery:
              retry: {maxAttempts: 1000, initialBackoff: 20ms, maxBackoff: 100ms}
            routes:
              - from: events
                to:
                  - {hub: chat, group: stream}
                batch: {maxMessages: 25, maxDelay: 5ms}
            """
        let first = try startBridge(yaml, in: dir)
        #expect(await eventually(timeout: .seconds(60)) { gate.refused.load(ordering: .relaxed) >= 8 }, "\(first.logTail)")
        let during = try await KafkaTool.committed(broker.brokers, group: "g-batched", topic: topic, partitions: 4)
        #expect(during.values.allSatisfy { $0 <= 0 }, "committed before any batch was accepted: \(during)")
        // SIGKILL while batches are in flight, being retried.
        first.kill()
        _ = await first.exitStatus()
        gate.open()
        let second = try startBridge(yaml, in: dir)
        func elements() -> [[(p: Int, n: Int)]] {
            accepted.all.map { body in
                guard case .array(let items)? = try? JSONValue(parsing: body) else { return [] }
                return items.compactMap { item in
                    guard case .number(let p)? = item["p"], case .number(let n)? = item["n"], let p = Int(p), let n = Int(n) else { return nil }
                    return (p, n)
                }
            }
        }
        #expect(
            await eventually(timeout: .seconds(90)) { Set(elements().joined().map(\.n)).count == count },
            "delivered \(Set(elements().joined().map(\.n)).count) of \(count); log:\n\(second.logTail)")
        #expect(
            await eventually(timeout: .seconds(30)) {
                (try? await KafkaTool.committed(broker.brokers, group: "g-batched", topic: topic, partitions: 4)).map { $0.values.reduce(0, +) }
                    == count
            }, "offsets after delivery")
        second.terminate()
        #expect(await second.exitStatus() == 0)
        let batches = elements()
        #expect(batches.allSatisfy { !$0.isEmpty }, "every send is a JSON array of the messages")
        #expect(batches.count < count && batches.contains { $0.count > 1 }, "\(batches.count) sends for \(count) messages")
        #expect(batches.allSatisfy { $0.count <= 25 })
        // The second bridge read every partition from offset 0 (nothing was committed): each
        // partition arrives complete and in order, batch after batch. (The killed bridge stays in
        // the group until its session ends; the rebalance then may hand partitions over again,
        // and what was read since the last commit comes again: the first arrivals are in order.)
        var seen: Set<Int> = []
        let firsts = batches.joined().filter { seen.insert($0.n).inserted }
        for (p, items) in Dictionary(grouping: firsts, by: \.p) {
            #expect(items.map(\.n) == Array(stride(from: p, to: count, by: 4)), "partition \(p): \(items.map(\.n).prefix(30))")
        }
        print("kafka batching test: \(batches.count) sends, \(batches.joined().count - count) messages delivered again after the rebalance")
        #expect(!FileManager.default.fileExists(atPath: dir + "/dead.ndjson"), "nothing dead-lettered")
        await server.stop()
        await broker.stop()
    }
}
