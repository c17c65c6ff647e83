import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing

/// Scale-out (issue 21): replicas of the bridge as consumers of one Redis Streams group.
extension RedisEndToEndTests {
    /// Three replicas (consumers c1, c2, c3) read one stream; c1 is killed (SIGKILL) mid-stream
    /// and a fourth started. The entries c1 had read but not acknowledged are claimed by the
    /// others once idle for `minIdle` (`XAUTOCLAIM`): every entry arrives, nothing stays pending,
    /// and the duplicates (c1's deliveries it could not acknowledge) are counted and printed.
    @Test func replicasShareAStreamAndADeadOnesEntriesAreClaimed() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let count = 3000
        try await addEntries(redis, count: count)
        let subscriber = try await hub.subscriber(hub: "chat", group: "stream")
        func yaml(_ consumer: String) -> String {
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: events
                type: redis-stream
                url: \(redis.url)
                streams: [events]
                group: bridge
                consumer: \(consumer)
                startFrom: earliest
                minIdle: 2s
                count: 20
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: stream}
            delivery:
              concurrency: 2
              maxInFlight: 8
            """
        }
        var replicas: [(name: String, dir: String, bridge: BridgeProcess)] = []
        for name in ["c1", "c2", "c3"] {
            let dir = try TestEnvironment.temporaryDirectory()
            replicas.append((name, dir, try BridgeProcess(yaml(name), in: dir)))
        }
        var got = await subscriber.messages(600)
        replicas[0].bridge.kill()
        _ = await replicas[0].bridge.exitStatus()
        let beforeKill = got.count
        let dir = try TestEnvironment.temporaryDirectory()
        replicas.append(("c4", dir, try BridgeProcess(yaml("c4"), in: dir)))
        while Set(numbers(got)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(30)) {
            got.append(m)
        }
        let distinct = Set(numbers(got))
        #expect(distinct.count == count, "missing \(Set(0..<count).subtracting(distinct).sorted().prefix(20))")
        // Each replica joined the group as a consumer of its own.
        let consumers = try await redis.raw(["XINFO", "CONSUMERS", "events", "bridge"])
        for name in ["c1", "c2", "c3", "c4"] { #expect(consumers.contains(name), "\(consumers)") }
        // The dead one's pending entries were claimed by another replica.
        let logs = replicas.dropFirst().map { (try? String(contentsOfFile: $0.dir + "/bridge.log", encoding: .utf8)) ?? "" }
        #expect(logs.contains { $0.contains("redis stream entries reclaimed") }, "no replica claimed c1's entries")
        print(
            "redis stream replica test: 3 replicas; \(beforeKill) delivered before SIGKILL, \(got.count) in all, \(got.count - distinct.count) duplicates of \(count)"
        )
        for replica in replicas.dropFirst() {
            replica.bridge.terminate()
            #expect(await replica.bridge.exitStatus() == 0)
        }
        let pending = try await redis.raw(["XPENDING", "events", "bridge"])
        #expect(pending.split(separator: "\n").first == "0", "pending: \(pending)")
        await redis.stop()
        await hub.stop()
    }
}
