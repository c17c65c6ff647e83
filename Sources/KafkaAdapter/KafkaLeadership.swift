package import BridgeConfig
import BridgeCore
import BridgeObservability
import CRdKafka
import CoreMetrics
import Foundation
package import Logging
import Synchronization

/// Leadership through a Kafka consumer group: the member that owns partition 0 of the lease
/// topic leads. Each replica joins the group `group` on `topic` (created by the broker on first
/// use where it auto-creates topics; one partition is enough, others are ignored).
///
/// Rebalancing is cooperative (`cooperative-sticky`): a replica that joins does not take the
/// partition from the leader. The leader stops leading in the rebalance callback that revokes
/// or loses the partition, before the group hands it on; a leader cut off from the broker loses
/// it when its session (`ttl`, `session.timeout.ms`) runs out, which is also when the group gives
/// it to another. A graceful stop leaves the group (`rd_kafka_consumer_close`): the next leader
/// is chosen at once. After a SIGKILL the group waits for the session to time out.
package final class KafkaLeadership: Leadership, HealthReporting, @unchecked Sendable {
    package struct Settings: Sendable, Equatable {
        package var brokers: String
        package var topic = "wps-bridge-leader"
        package var group = "wps-bridge-leader"
        /// The group session: a dead leader is replaced after it.
        package var ttl: Duration = .seconds(6)
        package var id: String

        package init(brokers: String, id: String) {
            self.brokers = brokers
            self.id = id
        }
    }

    package let settings: Settings
    private let logger: Logger
    private let context: KafkaClientContext
    private let leading = Atomic<Bool>(false)
    /// Partition 0 is assigned to this member (leading stops earlier, at cancellation).
    private let holding = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let gauge: Gauge

    package init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        context = KafkaClientContext(logger: logger, role: "coordination")
        gauge = Gauge(label: MetricName.leader, dimensions: [("lease", "kafka \(settings.topic)")])
        gauge.record(0)
    }

    package var isLeader: Bool { leading.load(ordering: .acquiring) }

    package var description: String {
        "lease: partition 0 of Kafka topic '\(settings.topic)' in group '\(settings.group)' at \(settings.brokers) (session \(settings.ttl)) as \(settings.id)"
    }

    package var healthProblem: String? { context.currentProblem }

    package func run() async throws {
        let ms = Int64(settings.ttl / .milliseconds(1))
        let properties: [(String, String)] = [
            ("bootstrap.servers", settings.brokers), ("group.id", settings.group), ("client.id", "wps-bridge-\(settings.id)"),
            ("session.timeout.ms", String(ms)), ("heartbeat.interval.ms", String(max(100, ms / 6))),
            ("partition.assignment.strategy", "cooperative-sticky"), ("enable.auto.commit", "false"),
            ("allow.auto.create.topics", "true"), ("auto.offset.reset", "latest"),
        ]
        let conf = try KafkaConfiguration(properties).make()
        context.install(on: conf)
        rd_kafka_conf_set_rebalance_cb(conf) { rk, err, partitions, _ in
            KafkaLeadership.registry(rk)?.rebalance(rk: rk!, err: err, partitions: partitions)
        }
        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError("cannot create the coordination consumer: \(text(errstr))")
        }
        Self.register(self, for: rk)
        rd_kafka_poll_set_consumer(rk)
        let list = rd_kafka_topic_partition_list_new(1)!
        rd_kafka_topic_partition_list_add(list, settings.topic, wps_rd_kafka_partition_ua())
        let err = rd_kafka_subscribe(rk, list)
        rd_kafka_topic_partition_list_destroy(list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            Self.unregister(rk)
            rd_kafka_destroy(rk)
            throw KafkaError(code: err, "cannot join the coordination group on topic '\(settings.topic)'")
        }
        logger.info("campaigning for leadership", metadata: [LogKey.lease: "kafka \(settings.topic)", LogKey.replica: "\(settings.id)"])
        // A thread of its own polls (the group's heartbeats and rebalances run from the poll);
        // its end is awaited, so that the group is left before `run` returns.
        let handle = ClientHandle(rk: rk)
        await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let thread = Thread { [self] in
                    let rk = handle.rk
                    while !stopping.load(ordering: .acquiring) {
                        if let message = rd_kafka_consumer_poll(rk, 100) { rd_kafka_message_destroy(message) }
                    }
                    // Stop leading first, then leave the group: the next leader starts after this one stopped.
                    leading.store(false, ordering: .releasing)
                    let led = holding.load(ordering: .acquiring)
                    gauge.record(0)
                    rd_kafka_consumer_close(rk)
                    Self.unregister(rk)
                    rd_kafka_destroy(rk)
                    if led { logger.info("leadership released", metadata: [LogKey.lease: "kafka \(settings.topic)"]) }
                    done.resume()
                }
                thread.name = "wps-kafka-lease"
                thread.start()
            }
        } onCancel: {
            leading.store(false, ordering: .releasing)
            stopping.store(true, ordering: .releasing)
        }
    }

    private func rebalance(rk: OpaquePointer, err: rd_kafka_resp_err_t, partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        guard let partitions else { return }
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let holdsLease = partitions.partitions.contains { $0.topic == settings.topic && $0.partition == 0 }
        if err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            if cooperative {
                if let error = rd_kafka_incremental_assign(rk, partitions) { rd_kafka_error_destroy(error) }
            } else {
                rd_kafka_assign(rk, partitions)
            }
            context.healthy()
            if holdsLease { holding.store(true, ordering: .releasing) }
            if holdsLease, !stopping.load(ordering: .acquiring), !leading.exchange(true, ordering: .acquiringAndReleasing) {
                gauge.record(1)
                logger.notice("this replica leads", metadata: [LogKey.lease: "kafka \(settings.topic)", LogKey.replica: "\(settings.id)"])
            } else if !holding.load(ordering: .acquiring), !stopping.load(ordering: .acquiring) {
                // Each rebalance that leaves this member without the partition (an empty
                // assignment too reaches this callback): it is in the group and stands by.
                logger.info("this replica stands by", metadata: [LogKey.lease: "kafka \(settings.topic)", LogKey.replica: "\(settings.id)"])
            }
        } else {
            // Revoked or lost: stop leading before the partition goes (the callback returns first).
            if holdsLease { holding.store(false, ordering: .releasing) }
            if holdsLease, leading.exchange(false, ordering: .acquiringAndReleasing) {
                gauge.record(0)
                let lost = rd_kafka_assignment_lost(rk) != 0
                logger.warning(
                    "this replica no longer leads",
                    metadata: [
                        LogKey.lease: "kafka \(settings.topic)",
                        LogKey.reason: "\(lost ? "the group session was lost" : "the group moved the lease")",
                    ])
            }
            if cooperative {
                if let error = rd_kafka_incremental_unassign(rk, partitions) { rd_kafka_error_destroy(error) }
            } else {
                rd_kafka_assign(rk, nil)
            }
        }
    }

    /// The librdkafka handle, moved to the poll thread.
    private struct ClientHandle: @unchecked Sendable {
        let rk: OpaquePointer
    }

    private static let instances = Mutex<[Int: KafkaLeadership]>([:])
    private static func register(_ leadership: KafkaLeadership, for rk: OpaquePointer) {
        instances.withLock { $0[Int(bitPattern: UnsafeMutableRawPointer(rk))] = leadership }
    }
    private static func unregister(_ rk: OpaquePointer) {
        _ = instances.withLock { $0.removeValue(forKey: Int(bitPattern: UnsafeMutableRawPointer(rk))) }
    }
    private static func registry(_ rk: OpaquePointer?) -> KafkaLeadership? {
        guard let rk else { return nil }
        return instances.withLock { $0[Int(bitPattern: UnsafeMutableRawPointer(rk))] }
    }
}

extension KafkaLeadership.Settings {
    /// `coordination.kafka`: `brokers`, `topic`, `group`, `ttl` (the session: 6s to 60s).
    package static func read(_ m: ConfigMapping, id: String) -> Self? {
        m.checkKeys(["brokers", "topic", "group", "ttl"], what: "coordination.kafka")
        guard let brokers = readBrokers(m) else { return nil }
        var settings = Self(brokers: brokers, id: id)
        if let topic = m.nonEmptyString("topic") { settings.topic = topic }
        if let group = m.nonEmptyString("group") { settings.group = group }
        settings.ttl =
            m.duration("ttl", within: .seconds(1) ... .seconds(60), why: "the group session (brokers often refuse less than 6s)") ?? settings.ttl
        return settings
    }
}
