import BridgeTestSupport
import Foundation
import Testing

/// Scale-out (issue 21): the lease through Kafka (`coordination.kafka`): the replica that owns
/// partition 0 of the lease topic in the lease group leads a Redis pub/sub source that every
/// replica hears.
extension KafkaEndToEndTests {
    @Test func aKafkaGroupLeaseElectsOneReplicaAndReplacesAKilledLeader() async throws {
        let broker = try await KafkaBroker()
        try await KafkaTool.create(broker.brokers, topic: "ticks-lease", partitions: 1)
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let ttl = 6.0
        let run = try await LeaderFailover.run(redis: redis, hub: hub, ttl: ttl) { _ in
            "  kafka: {brokers: \"\(broker.brokers)\", topic: ticks-lease, group: ticks-lease, ttl: \(Int(ttl))s}"
        }
        #expect(run.steady == Array(0..<50), "while both run, one forwards: \(run.steady)")
        #expect(run.doubled.isEmpty, "forwarded twice: \(run.doubled.prefix(20))")
        #expect(run.stoppedLeaderStatus == 0 && run.stoppedLeaderReleased, "the stopped leader leaves the group")
        // A leaving member is replaced after the group's rebalance; a dead one after its session.
        #expect(run.handover.duration < .seconds(ttl), "handover after a release: \(run.handover)")
        #expect(run.failover.duration < .seconds(ttl * 2 + 4), "failover after SIGKILL: \(run.failover)")
        #expect(run.received == run.received.sorted(), "out of order")
        #expect(run.distinct + run.handover.missing + run.failover.missing == run.published, "lost outside the gaps")
        #expect(run.readyz.contains(#""leader":true"#), "\(run.readyz)")
        #expect(
            run.metrics.contains(#"wps_bridge_leader{lease="kafka ticks-lease"} 1"#),
            "\(run.metrics.split(separator: "\n").filter { $0.contains("leader") })")
        #expect(run.finalStatuses.allSatisfy { $0 == 0 })
        #expect(run.standingBy.contains { $0.contains(#""wps.replica":"r3""#) }, "\(run.standingBy)")
        print(
            "leader lease test (kafka, session \(ttl)s): \(run.published) published, \(run.distinct) forwarded, \(run.doubled.count) doubled; "
                + "after SIGTERM \(run.handover), after SIGKILL \(run.failover)")
        await redis.stop()
        await hub.stop()
        await broker.stop()
    }
}
