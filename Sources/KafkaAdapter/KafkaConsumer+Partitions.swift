import BridgeObservability
import CRdKafka
import CoreMetrics
import Dispatch
import Logging
import Synchronization

/// What the poll thread does to partitions: pauses and resumes, commits, rebalances, rewinds
/// and the lag. Everything here runs on the poll thread (the callbacks inside
/// `rd_kafka_consumer_poll` or `rd_kafka_consumer_close`).
extension KafkaConsumer {
    /// Pauses or resumes `only` these partitions (those still assigned), or every assigned one.
    func setPaused(_ pause: Bool, only: Set<TopicPartition>? = nil) {
        var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(rk, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR, let assigned else { return }
        defer { rd_kafka_topic_partition_list_destroy(assigned) }
        let chosen = assigned.partitions.filter { only?.contains($0) ?? true }
        state.withLock { s in
            if pause { s.machine.paused(chosen, all: only == nil) } else { s.machine.resumed(chosen) }
        }
        guard !chosen.isEmpty else { return }
        let list = makePartitionList(chosen.map { ($0, nil) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let err = pause ? rd_kafka_pause_partitions(rk, list) : rd_kafka_resume_partitions(rk, list)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning(
                pause ? "kafka pause failed" : "kafka resume failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
        } else if only == nil {
            logger.debug(pause ? "kafka partitions paused: draining" : "kafka partitions resumed")
        }
    }

    // MARK: - Commits

    /// Commits the contiguous acknowledged position of every partition that moved.
    func commit(sync: Bool, only partitions: Set<TopicPartition>? = nil) {
        let entries = state.withLock { $0.machine.commitEntries(sync: sync, only: partitions) }
        guard !entries.isEmpty else { return }
        let list = makePartitionList(entries.map { ($0.0, $0.1) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let err = rd_kafka_commit(rk, list, sync ? 0 : 1)
        if sync {
            // A synchronous commit's result also reaches the commit callback; record it here too.
            if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                state.withLock { $0.machine.committed(entries) }
            } else {
                logger.warning(
                    "kafka offset commit failed; the messages after the last committed offset will be read again",
                    metadata: [
                        LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))", LogKey.partitions: "\(entries.map { "\($0.0)@\($0.1)" })",
                    ])
            }
        } else if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            state.withLock { $0.machine.asyncCommitEnded() }
            logger.debug("kafka async commit not started", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
        }
    }

    /// The commit callback.
    func committed(err: rd_kafka_resp_err_t, offsets: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        state.withLock { $0.machine.asyncCommitEnded() }
        if err == RD_KAFKA_RESP_ERR__NO_OFFSET { return }
        guard let offsets else { return }
        var done: [(TopicPartition, Int64)] = []
        for i in 0..<Int(offsets.pointee.cnt) {
            let e = offsets.pointee.elems[i]
            let tp = TopicPartition(topic: String(cString: e.topic), partition: e.partition)
            if e.err == RD_KAFKA_RESP_ERR_NO_ERROR && err == RD_KAFKA_RESP_ERR_NO_ERROR {
                done.append((tp, e.offset))
            } else {
                let code = e.err != RD_KAFKA_RESP_ERR_NO_ERROR ? e.err : err
                logger.warning(
                    "kafka offset commit failed; retried at the next commit",
                    metadata: [
                        LogKey.partitions: "\(tp)", LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(code)))",
                    ])
            }
        }
        state.withLock { $0.machine.committed(done) }
    }

    // MARK: - Rebalances

    /// How many partitions this consumer holds.
    private var held: Int { state.withLock { $0.machine.partitions.count } }

    /// The rebalance callback.
    func rebalance(err: rd_kafka_resp_err_t, partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        guard let partitions else { return }
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let tps = partitions.partitions
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            let pause = state.withLock { $0.machine.assigned(tps) }
            if cooperative {
                if let error = rd_kafka_incremental_assign(rk, partitions) {
                    logger.error("kafka incremental assign failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_error_string(error)))"])
                    rd_kafka_error_destroy(error)
                }
            } else {
                let e = rd_kafka_assign(rk, partitions)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR {
                    logger.error("kafka assign failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(e)))"])
                }
            }
            if pause {
                // Everything else is paused (draining); new partitions must not run ahead.
                rd_kafka_pause_partitions(rk, partitions)
            } else {
                // librdkafka keeps a partition's pause across a revoke and a new assignment: one
                // paused here before a rebalance would never be read again.
                rd_kafka_resume_partitions(rk, partitions)
            }
            context.healthy()
            // Cooperative rebalances name only what moved (an empty list is a round in which
            // nothing came); `held` is what the replica reads now.
            logger.info(
                "kafka partitions assigned", metadata: [LogKey.partitions: "\(tps.map(\.description).sorted())", LogKey.held: "\(held)"])
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            revoke(Set(tps))
            if cooperative {
                if let error = rd_kafka_incremental_unassign(rk, partitions) {
                    logger.error(
                        "kafka incremental unassign failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_error_string(error)))"])
                    rd_kafka_error_destroy(error)
                }
            } else {
                rd_kafka_assign(rk, nil)
            }
            logger.info(
                "kafka partitions revoked", metadata: [LogKey.partitions: "\(tps.map(\.description).sorted())", LogKey.held: "\(held)"])
        default:
            logger.error("kafka rebalance error", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
            let dropped = state.withLock { $0.machine.rebalanceFailed() }
            for tp in dropped { lagGauge(tp).destroy() }
            rd_kafka_assign(rk, nil)
        }
    }

    /// Lets partitions go: records of them not yet handed out are dropped (their next owner
    /// reads them again), in-flight ones get `revokeDrainTimeout` to settle, then the
    /// contiguous acknowledged position is committed.
    private func revoke(_ revoked: Set<TopicPartition>) {
        state.withLock { $0.machine.revokeBegins(revoked) }
        // Woken by the settlement that leaves nothing in flight (`settle` signals); a signal
        // left from an earlier revoke only makes the loop look once more.
        let deadline = DispatchTime.now() + .nanoseconds(Int(settings.revokeDrainTimeout / .nanoseconds(1)))
        while state.withLock({ $0.machine.inFlight(of: revoked) }) > 0 {
            if revokeSettled.wait(timeout: deadline) == .timedOut { break }
        }
        commit(sync: true, only: revoked)
        state.withLock { $0.machine.revoked(revoked) }
        // Its lag is the next owner's to tell.
        for tp in revoked { lagGauge(tp).destroy() }
    }

    // MARK: - Rewinds and lag

    /// Seeks partitions back to a message that could not be settled (or to the oldest message
    /// of the partition not yet settled, if that is earlier), then starts a new generation for
    /// each partition whose seek worked: acknowledgements of what was handed out before are
    /// ignored, and those messages come again. Runs on the poll thread, as `take` does, so no
    /// record is taken between the seek and the new generation.
    func rewindDue() {
        let due = state.withLock { $0.machine.dueRewinds(now: .now) }
        guard !due.isEmpty else { return }
        let list = makePartitionList(due.map { ($0.0, $0.1) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        var failed: Set<TopicPartition> = []
        if let error = rd_kafka_seek_partitions(rk, list, 5000) {
            logger.error("kafka seek failed; trying again later", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_error_string(error)))"])
            rd_kafka_error_destroy(error)
            failed = Set(due.map(\.0))
        } else {
            for i in 0..<Int(list.pointee.cnt) where list.pointee.elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR {
                let e = list.pointee.elems[i]
                failed.insert(TopicPartition(topic: String(cString: e.topic), partition: e.partition))
                logger.error(
                    "kafka seek failed; trying again later",
                    metadata: [
                        LogKey.partitions: "\(String(cString: e.topic))[\(e.partition)]",
                        LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(e.err)))",
                    ])
            }
        }
        let rewound = state.withLock { $0.machine.rewound(due, failed: failed, now: .now) }
        guard !rewound.isEmpty else { return }
        logger.warning(
            "kafka partition read again from a message that could not be settled (its dead letter was not written)",
            metadata: [LogKey.partitions: "\(rewound.map { "\($0.0)@\($0.1)" })"])
    }

    /// `wps_bridge_kafka_consumer_lag`: per assigned partition, the high watermark (as last
    /// fetched, no broker round trip) minus the position not yet done (the next commit).
    func recordLag() {
        // While a problem is known (brokers down), ask a broker: an answer means it is over,
        // also when no message comes to say so.
        if context.problemIsConnectivity, let tp = state.withLock({ $0.machine.partitions.keys.first }) {
            var low: Int64 = 0
            var high: Int64 = 0
            if rd_kafka_query_watermark_offsets(rk, tp.topic, tp.partition, &low, &high, 500) == RD_KAFKA_RESP_ERR_NO_ERROR { context.healthy() }
        }
        for (tp, position) in state.withLock({ $0.machine.lagPositions }) {
            var low: Int64 = 0
            var high: Int64 = 0
            guard rd_kafka_get_watermark_offsets(rk, tp.topic, tp.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0 else { continue }
            lagGauge(tp).record(max(0, high - position))
        }
    }

    private func lagGauge(_ tp: TopicPartition) -> Gauge {
        Gauge(
            label: MetricName.kafkaConsumerLag, dimensions: [("source", settings.source), ("topic", tp.topic), ("partition", String(tp.partition))])
    }
}
