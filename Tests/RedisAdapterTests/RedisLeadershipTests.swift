import AsyncHTTPClient
import BridgeJSON
import BridgeTestSupport
import Foundation
import NIOCore
import Testing

/// Scale-out (issue 21): a Redis pub/sub source every replica hears, `replicas: many`, led
/// through a lease in Redis (`coordination.redis`).
extension RedisEndToEndTests {
    /// Two replicas hear one channel; only the leader forwards. The leader is stopped (SIGTERM:
    /// it releases the lease) and the other takes over at once; a third replica starts, and the
    /// new leader is killed (SIGKILL: the lease must expire) and the third takes over within the
    /// ttl. Nothing is forwarded twice; the gaps (messages published while nobody led) are
    /// measured and printed.
    @Test func aPubSubSourceIsForwardedByOneReplicaAndALeaderIsReplaced() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let subscriber = try await hub.subscriber(hub: "chat", group: "ticks")
        let ttl = 2.0
        var replicas: [(name: String, port: Int, bridge: BridgeProcess)] = []
        func start(_ name: String) throws {
            let port = try TestEnvironment.freePort()
            let bridge = try BridgeProcess(
                """
                webpubsub: {connectionString: "\(hub.connectionString)", hub: chat}
                server: {listen: "127.0.0.1:\(port)"}
                coordination:
                  redis: {url: "\(redis.url)", key: "ticks-leader", ttl: \(Int(ttl))s}
                  id: \(name)
                sources:
                  - {name: live, type: redis, url: "\(redis.url)", channels: [ticks], replicas: many}
                routes:
                  - {from: live, to: [{group: ticks}]}
                """, in: try TestEnvironment.temporaryDirectory())
            replicas.append((name, port, bridge))
        }
        func leaders() -> [Int] {
            replicas.indices.filter { replicas[$0].bridge.isRunning && replicas[$0].bridge.log.contains("this replica leads") }
        }
        func subscribed(_ count: Int) async -> Bool {
            await eventually { (Int((try? await redis.raw(["PUBSUB", "NUMSUB", "ticks"]))?.split(separator: "\n").last ?? "") ?? 0) >= count }
        }
        try start("r1")
        try start("r2")
        #expect(await subscribed(2), "both replicas subscribe")
        #expect(await eventually { leaders().count == 1 }, "one leader: \(leaders())")

        var published: [(n: Int, at: ContinuousClock.Instant)] = []
        func publish(_ range: Range<Int>) async throws {
            for n in range {
                published.append((n, .now))
                _ = try await redis.cli("PUBLISH", "ticks", #"{"n":\#(n)}"#)
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        func received(_ messages: [JSONValue]) -> [Int] {
            messages.compactMap { if case .number(let n) = $0["data"]?["n"] { Int(n) } else { nil } }
        }
        // Steady: one replica forwards, the other hears and drops.
        try await publish(0..<50)
        var got = received(await subscriber.messages(50, idle: .seconds(5)))
        #expect(got == Array(0..<50), "\(got)")

        // A graceful stop hands over at once: the lease is released.
        let first = try #require(leaders().first)
        replicas[first].bridge.terminate()
        #expect(await replicas[first].bridge.exitStatus() == 0)
        #expect(replicas[first].bridge.log.contains("leadership released"), "\(replicas[first].bridge.logTail)")
        let handoverStart = published.count
        try await publish(50..<150)
        // A SIGKILLed leader keeps the key until it expires.
        try start("r3")
        #expect(await subscribed(2), "r3 subscribes")
        let second = try #require(leaders().first)
        let killedAt = published.count + 50
        try await publish(150..<killedAt)
        replicas[second].bridge.kill()
        _ = await replicas[second].bridge.exitStatus()
        try await publish(killedAt..<(killedAt + Int(ttl * 1000 / 10) + 200))
        got += received(await subscriber.messages(published.count, idle: .seconds(3)))

        let counts = Dictionary(got.map { ($0, 1) }, uniquingKeysWith: +)
        let doubled = counts.filter { $0.value > 1 }.keys.sorted()
        #expect(doubled.isEmpty, "forwarded twice: \(doubled.prefix(20))")
        // Each gap: the messages published between the last one forwarded and the next.
        func gap(after index: Int) -> (missing: Int, duration: Duration) {
            let before = published[..<index].last { counts[$0.n] != nil }
            let after = published[index...].first { counts[$0.n] != nil }
            guard let before, let after else { return (Int.max, .seconds(3600)) }
            return (after.n - before.n - 1, after.at - before.at)
        }
        let handover = gap(after: handoverStart)
        let failover = gap(after: killedAt)
        #expect(handover.duration < .seconds(2), "handover after a release took \(handover.duration)")
        #expect(failover.duration < .seconds(ttl * 1.2 + 2), "failover after SIGKILL took \(failover.duration)")
        // Apart from the two gaps, everything arrived in order.
        #expect(got == got.sorted(), "out of order")
        #expect(counts.count + handover.missing + failover.missing == published.count, "lost outside the gaps")
        print(
            "leader lease test (redis, ttl \(ttl)s): \(published.count) published, \(counts.count) forwarded, \(doubled.count) doubled; "
                + "after SIGTERM \(handover.missing) unled (\(handover.duration)), after SIGKILL \(failover.missing) unled (\(failover.duration))")

        // The survivor says it leads: /readyz and the metric.
        let leader = try #require(leaders().first)
        let ready = try await HTTPClient.shared.execute(.init(url: "http://127.0.0.1:\(replicas[leader].port)/readyz"), timeout: .seconds(5))
        let body = String(buffer: try await ready.body.collect(upTo: 65536))
        #expect(body.contains(#""leader":true"#), "\(body)")
        let metrics = try await HTTPClient.shared.execute(.init(url: "http://127.0.0.1:\(replicas[leader].port)/metrics"), timeout: .seconds(5))
        let text = String(buffer: try await metrics.body.collect(upTo: 1 << 20))
        #expect(text.contains(#"wps_bridge_leader{lease="redis ticks-leader"} 1"#), "\(text.split(separator: "\n").filter { $0.contains("leader") })")
        for index in replicas.indices where replicas[index].bridge.isRunning {
            replicas[index].bridge.terminate()
            #expect(await replicas[index].bridge.exitStatus() == 0)
        }
        #expect(try await redis.raw(["EXISTS", "ticks-leader"]).trimmingCharacters(in: .whitespacesAndNewlines) == "0", "released at the end")
        await redis.stop()
        await hub.stop()
    }
}
