import BridgeTestSupport
import Foundation
import Testing

/// Scale-out (issue 21): a Redis pub/sub source every replica hears, `replicas: many`, led
/// through a lease in Redis (`coordination.redis`).
extension RedisEndToEndTests {
    /// Two replicas hear one channel and only the leader forwards; the leader stopped with
    /// SIGTERM releases the lease and the other takes over at once; a leader killed with SIGKILL
    /// is replaced once its key expires. Nothing is forwarded twice; the gaps are printed.
    @Test func aPubSubSourceIsForwardedByOneReplicaAndALeaderIsReplaced() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let ttl = 2.0
        let run = try await LeaderFailover.run(redis: redis, hub: hub, ttl: ttl) { _ in
            "  redis: {url: \"\(redis.url)\", key: \"ticks-leader\", ttl: \(Int(ttl))s}"
        }
        #expect(run.steady == Array(0..<50), "while both run, one forwards: \(run.steady)")
        #expect(run.doubled.isEmpty, "forwarded twice: \(run.doubled.prefix(20))")
        #expect(run.stoppedLeaderStatus == 0 && run.stoppedLeaderReleased, "the stopped leader releases the lease")
        #expect(run.handover.duration < .seconds(2), "handover after a release: \(run.handover)")
        #expect(run.failover.duration < .seconds(ttl * 1.2 + 2), "failover after SIGKILL: \(run.failover)")
        // Apart from the two gaps, everything arrived, in order.
        #expect(run.received == run.received.sorted(), "out of order")
        #expect(run.distinct + run.handover.missing + run.failover.missing == run.published, "lost outside the gaps")
        #expect(run.readyz.contains(#""leader":true"#), "\(run.readyz)")
        #expect(
            run.metrics.contains(#"wps_bridge_leader{lease="redis ticks-leader"} 1"#),
            "\(run.metrics.split(separator: "\n").filter { $0.contains("leader") })")
        #expect(run.finalStatuses.allSatisfy { $0 == 0 })
        // Each replica that stood by said so once, and named the leader (another replica).
        let named = run.standingBy.map { line in
            ["wps.replica", "wps.leader"].map { key in
                line.firstMatch(of: try! Regex("\"\(key)\":\"(r[0-9])\""))?.output[1].substring.map(String.init)
            }
        }
        #expect(named.count == 2 && named.allSatisfy { $0[0] != nil && $0[1] != nil && $0[0] != $0[1] }, "\(run.standingBy)")
        #expect(named.contains { $0[0] == "r3" }, "r3 joined while another led: \(run.standingBy)")
        #expect(try await redis.raw(["EXISTS", "ticks-leader"]).trimmingCharacters(in: .whitespacesAndNewlines) == "0", "released at the end")
        print(
            "leader lease test (redis, ttl \(ttl)s): \(run.published) published, \(run.distinct) forwarded, \(run.doubled.count) doubled; "
                + "after SIGTERM \(run.handover), after SIGKILL \(run.failover)")
        await redis.stop()
        await hub.stop()
    }
}
