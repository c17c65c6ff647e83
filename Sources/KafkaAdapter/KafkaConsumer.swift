import BridgeCore
import BridgeObservability
import CRdKafka
import CoreMetrics
import DequeModule
import Foundation
import Logging
import NIOCore
import Synchronization

/// A message taken from Kafka, with where it came from, waiting to be handed to the dispatcher.
struct KafkaRecord: Sendable {
    let partition: TopicPartition
    let offset: Int64
    let generation: Int
    let key: [UInt8]?
    let payload: [UInt8]
    let headers: [(String, [UInt8])]
    /// Milliseconds since the epoch, when the broker or producer set one.
    let timestamp: Int64?
}

/// A librdkafka consumer in a consumer group, driven by a thread of its own so that blocking
/// polls and the rebalance callbacks never run on Swift's cooperative pool.
///
/// The thread polls and puts records into a hand-off queue that hands them out one partition
/// after another; a partition whose records pile up there (the dispatcher is not taking more)
/// is paused until it has room again: polling goes on, so the group membership and rebalances
/// keep working while nothing new is fetched for it. Offsets are
/// committed up to the highest contiguous acknowledged offset per partition, every
/// `commitInterval`, on revoke and on close.
final class KafkaConsumer: @unchecked Sendable {
    struct Settings: Sendable {
        var properties: [(String, String)]
        var topics: [String]
        var commitInterval: Duration = .seconds(1)
        /// How long a revoke waits for in-flight messages of the revoked partitions to settle
        /// before committing what is done and letting the partitions go.
        var revokeDrainTimeout: Duration = .seconds(10)
        /// Records waiting for the dispatcher, all partitions together, before a partition is
        /// paused: each assigned partition may hold its share; it is resumed at a quarter of
        /// that. Far apart: a pause drops what librdkafka had fetched ahead, which the resume
        /// fetches again.
        var highWater = 8192
        /// The source's name, for metrics.
        var source = "kafka"
        /// How often the lag of each assigned partition is measured.
        var lagInterval: Duration = .seconds(5)
    }

    private struct State {
        var queue = RecordQueue()
        /// Partitions paused because their records pile up here (mirror of the poll thread's).
        var paused: Set<TopicPartition> = []
        /// Paused partitions that have room again: resumed at the next poll.
        var resumeWanted: Set<TopicPartition> = []
        var waiter: CheckedContinuation<KafkaRecord?, Never>?
        var offsets: [TopicPartition: PartitionOffsets] = [:]
        var generation = 0
        /// No more records are wanted: `run` ended. The thread keeps polling (paused) until closed.
        var draining = false
        var closeRequested = false
        /// Whoever waits in `close` (a reload and the shutdown may both).
        var closed: [CheckedContinuation<Void, Never>] = []
        var threadDone = false
        var commitInFlight = false
        /// Partitions to read again from a message that could not be settled, and not before when.
        var rewinds: [TopicPartition: (offset: Int64, notBefore: ContinuousClock.Instant)] = [:]
        /// The wait before the next rewind of a partition: doubles while its rewinds keep failing.
        var rewindBackoff: [TopicPartition: Duration] = [:]
        /// Where each partition was last read again from: the backoff is over once that message settled.
        var rewoundTo: [TopicPartition: Int64] = [:]
    }

    let settings: Settings
    let logger: Logger
    let context: KafkaClientContext
    private let rk: OpaquePointer
    private let state = Mutex(State())
    /// Whether every assigned partition is paused (draining). Touched by the poll thread only.
    private var paused = false
    private var unknownTopicsLogged: Set<String> = []
    private let lastCommit = Mutex(ContinuousClock.now)
    /// Touched by the poll thread only.
    private var lastLag = ContinuousClock.now

    init(settings: Settings, logger: Logger) throws(KafkaError) {
        self.settings = settings
        self.logger = logger
        self.context = KafkaClientContext(logger: logger, role: "consumer")
        let conf = try KafkaConfiguration(settings.properties).make()
        context.install(on: conf)
        rd_kafka_conf_set_rebalance_cb(conf) { rk, err, partitions, _ in
            guard let consumer = KafkaConsumer.registry(rk) else { return }
            consumer.rebalance(err: err, partitions: partitions)
        }
        rd_kafka_conf_set_offset_commit_cb(conf) { rk, err, offsets, _ in
            guard let consumer = KafkaConsumer.registry(rk) else { return }
            consumer.committed(err: err, offsets: offsets)
        }
        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError("cannot create the Kafka consumer: \(text(errstr))")
        }
        self.rk = rk
        rd_kafka_poll_set_consumer(rk)
        KafkaConsumer.register(self, for: rk)
    }

    // The callbacks get the rd_kafka_t, whose opaque is the client context; the consumer is
    // found through a table keyed by the handle.
    private static let consumers = Mutex<[Int: KafkaConsumer]>([:])
    private static func register(_ consumer: KafkaConsumer, for rk: OpaquePointer) {
        consumers.withLock { $0[Int(bitPattern: UnsafeMutableRawPointer(rk))] = consumer }
    }
    private static func unregister(_ rk: OpaquePointer) {
        _ = consumers.withLock { $0.removeValue(forKey: Int(bitPattern: UnsafeMutableRawPointer(rk))) }
    }
    fileprivate static func registry(_ rk: OpaquePointer?) -> KafkaConsumer? {
        guard let rk else { return nil }
        return consumers.withLock { $0[Int(bitPattern: UnsafeMutableRawPointer(rk))] }
    }

    /// Subscribes and starts the poll thread.
    func start() throws(KafkaError) {
        let list = rd_kafka_topic_partition_list_new(Int32(settings.topics.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for topic in settings.topics {
            rd_kafka_topic_partition_list_add(list, topic, wps_rd_kafka_partition_ua())
        }
        let err = rd_kafka_subscribe(rk, list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(code: err, "cannot subscribe to \(settings.topics)") }
        let thread = Thread { [self] in pollLoop() }
        thread.name = "wps-kafka-consumer"
        thread.start()
    }

    /// Frees a consumer whose `start` failed (no poll thread runs).
    func destroyUnstarted() {
        KafkaConsumer.unregister(rk)
        rd_kafka_destroy(rk)
        state.withLock { $0.threadDone = true }
    }

    /// The next record, or nil once the consumer is draining or the task is cancelled.
    func next() async -> KafkaRecord? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<KafkaRecord?, Never>) in
                let immediate: KafkaRecord?? = state.withLock { s in
                    if s.draining || Task.isCancelled { return .some(nil) }
                    if let record = s.queue.popFirst() {
                        let tp = record.partition
                        if s.paused.contains(tp), s.queue.count(of: tp) <= Self.lowWater(s, settings) { s.resumeWanted.insert(tp) }
                        return .some(record)
                    }
                    s.waiter = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            state.withLock { s in
                let waiter = s.waiter
                s.waiter = nil
                return waiter
            }?.resume(returning: nil)
        }
    }

    /// Settles one record: acknowledged offsets may be committed. A record that failed (its
    /// dead letter could not be written) holds its partition's commit; unless the consumer is
    /// draining, the partition is read again from it after a backoff (1 s doubling to 30 s).
    func settle(_ record: KafkaRecord, _ outcome: DeliveryOutcome) {
        state.withLock { s in
            let tp = record.partition
            // Changed in place (`s.offsets[tp]!.`): a copy taken out of the dictionary would share
            // the tracker's storage, and each change would then copy all of it.
            guard s.offsets[tp]?.generation == record.generation else { return }
            switch outcome {
            case .done:
                s.offsets[tp]!.ack(record.offset)
                if s.rewoundTo[tp] == record.offset {
                    s.rewoundTo[tp] = nil
                    s.rewindBackoff[tp] = nil
                }
            case .failed:
                s.offsets[tp]!.fail(record.offset)
                if !s.draining {
                    let backoff = s.rewindBackoff[tp] ?? .seconds(1)
                    let earliest = min(s.rewinds[tp]?.offset ?? record.offset, record.offset)
                    s.rewinds[tp] = (earliest, s.rewinds[tp]?.notBefore ?? .now + backoff)
                    s.rewindBackoff[tp] = min(backoff * 2, .seconds(30))
                }
            }
        }
    }

    /// Stops handing out records; the partitions are paused at the next poll.
    func drain() {
        state.withLock { s in
            s.draining = true
            let waiter = s.waiter
            s.waiter = nil
            return waiter
        }?.resume(returning: nil)
    }

    /// Commits what was acknowledged, leaves the group and frees the client. Call once, after
    /// every record handed out was settled.
    func close() async {
        drain()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                s.closeRequested = true
                if s.threadDone { return true }
                s.closed.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    var isDraining: Bool { state.withLock { $0.draining } }

    // MARK: - The poll thread

    private func pollLoop() {
        while !state.withLock({ $0.closeRequested }) {
            let (draining, resume) = state.withLock { s -> (Bool, Set<TopicPartition>) in
                defer { s.resumeWanted.removeAll() }
                return (s.draining, s.resumeWanted)
            }
            if draining {
                if !paused { setPaused(true) }
            } else if !resume.isEmpty {
                setPaused(false, only: resume)
            }
            if let message = rd_kafka_consumer_poll(rk, 100) {
                take(message)
                rd_kafka_message_destroy(message)
            }
            if ContinuousClock.now - lastCommit.withLock({ $0 }) >= settings.commitInterval {
                commit(sync: false)
            }
            rewindDue()
            if ContinuousClock.now - lastLag >= settings.lagInterval {
                lastLag = .now
                recordLag()
            }
        }
        // Final commit, then leave the group (this serves the revoke callback on this thread).
        commit(sync: true)
        let err = rd_kafka_consumer_close(rk)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("kafka consumer close failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
        }
        KafkaConsumer.unregister(rk)
        rd_kafka_destroy(rk)
        let waiters = state.withLock { s in
            s.threadDone = true
            defer { s.closed.removeAll() }
            return s.closed
        }
        for waiter in waiters { waiter.resume() }
    }

    private func take(_ message: UnsafeMutablePointer<rd_kafka_message_t>) {
        let m = message.pointee
        guard m.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            consumerError(m)
            return
        }
        context.healthy()
        let topic = String(cString: rd_kafka_topic_name(m.rkt))
        let tp = TopicPartition(topic: topic, partition: m.partition)
        let payload = m.payload.map { [UInt8](UnsafeRawBufferPointer(start: $0, count: m.len)) } ?? []
        let key = m.key.map { [UInt8](UnsafeRawBufferPointer(start: $0, count: m.key_len)) }
        var headers: [(String, [UInt8])] = []
        var hdrs: OpaquePointer?
        if rd_kafka_message_headers(message, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs {
            var index = 0
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var size = 0
            while rd_kafka_header_get_all(hdrs, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                if let name {
                    headers.append((String(cString: name), value.map { [UInt8](UnsafeRawBufferPointer(start: $0, count: size)) } ?? []))
                }
                index += 1
            }
        }
        var tsType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = rd_kafka_message_timestamp(message, &tsType)
        var pause = false
        let waiter: (CheckedContinuation<KafkaRecord?, Never>, KafkaRecord)? = state.withLock { s in
            guard s.offsets[tp] != nil else {
                // Not (or no longer) assigned: librdkafka does not return such messages, but if it
                // did, dropping it is right: its next owner reads it from the committed offset.
                return nil
            }
            s.offsets[tp]!.taken(m.offset)
            let record = KafkaRecord(
                partition: tp, offset: m.offset, generation: s.offsets[tp]!.generation, key: key, payload: payload, headers: headers,
                timestamp: tsType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : ts)
            if let waiter = s.waiter {
                s.waiter = nil
                return (waiter, record)
            }
            s.queue.append(record)
            if !s.paused.contains(tp), s.queue.count(of: tp) >= Self.highWater(s, settings) {
                // Marked in the same step: `next` may empty the queue before the pause is made,
                // and must then see the partition as paused to ask for its resume.
                s.paused.insert(tp)
                pause = true
            }
            return nil
        }
        if let (continuation, record) = waiter { continuation.resume(returning: record) }
        if pause {
            // On the poll thread, which also makes the resumes: the pause comes first.
            let list = makePartitionList([(tp, nil)])
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let err = rd_kafka_pause_partitions(rk, list)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR {
                logger.warning("kafka pause failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
                state.withLock { _ = $0.paused.remove(tp) }
            }
        }
    }

    private func consumerError(_ m: rd_kafka_message_t) {
        let err = m.err
        let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) }
        if err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED {
            let name = topic ?? "?"
            if unknownTopicsLogged.insert(name).inserted {
                let text = m.payload.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: m.len), as: UTF8.self) } ?? ""
                logger.error(
                    "kafka topic cannot be consumed",
                    metadata: [
                        LogKey.topics: "\(name)", LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))", LogKey.detail: "\(text)",
                        LogKey.hint: "create the topic or fix `topics`; the consumer picks it up once it exists",
                    ])
                context.error(code: err.rawValue, reason: "topic '\(name)': \(String(cString: rd_kafka_err2str(err)))")
            }
            return
        }
        if err == RD_KAFKA_RESP_ERR__PARTITION_EOF { return }
        context.error(code: err.rawValue, reason: String(cString: rd_kafka_err2str(err)))
    }

    /// A partition's share of `highWater`; it is resumed at a quarter of it.
    private static func highWater(_ s: State, _ settings: Settings) -> Int { max(32, settings.highWater / max(1, s.offsets.count)) }
    private static func lowWater(_ s: State, _ settings: Settings) -> Int { highWater(s, settings) / 4 }

    /// Pauses or resumes `only` these partitions (those still assigned), or every assigned one.
    private func setPaused(_ pause: Bool, only: Set<TopicPartition>? = nil) {
        var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(rk, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR, let assigned else { return }
        defer { rd_kafka_topic_partition_list_destroy(assigned) }
        let chosen = assigned.partitions.filter { only?.contains($0) ?? true }
        if only == nil { paused = pause }
        state.withLock { s in
            if pause { s.paused.formUnion(chosen) } else { s.paused.subtract(chosen) }
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

    /// Commits the contiguous acknowledged position of every partition that moved.
    private func commit(sync: Bool, only partitions: Set<TopicPartition>? = nil) {
        lastCommit.withLock { $0 = .now }
        let entries: [(TopicPartition, Int64?)] = state.withLock { s in
            if !sync && s.commitInFlight { return [] }
            var entries: [(TopicPartition, Int64?)] = []
            for (tp, offsets) in s.offsets where partitions?.contains(tp) ?? true {
                if offsets.hasNewCommit, let position = offsets.commitPosition { entries.append((tp, position)) }
            }
            if !sync && !entries.isEmpty { s.commitInFlight = true }
            return entries
        }
        guard !entries.isEmpty else { return }
        let list = makePartitionList(entries)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let err = rd_kafka_commit(rk, list, sync ? 0 : 1)
        if sync {
            // A synchronous commit's result also reaches the commit callback; record it here too.
            if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                markCommitted(entries)
            } else {
                logger.warning(
                    "kafka offset commit failed; the messages after the last committed offset will be read again",
                    metadata: [
                        LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))", LogKey.partitions: "\(entries.map { "\($0.0)@\($0.1!)" })",
                    ])
            }
        } else if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            state.withLock { $0.commitInFlight = false }
            logger.debug("kafka async commit not started", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
        }
    }

    private func markCommitted(_ entries: [(TopicPartition, Int64?)]) {
        state.withLock { s in
            for (tp, position) in entries {
                guard let position, var offsets = s.offsets[tp] else { continue }
                if offsets.committed.map({ position > $0 }) ?? true { offsets.committed = position }
                s.offsets[tp] = offsets
            }
        }
    }

    fileprivate func committed(err: rd_kafka_resp_err_t, offsets: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        state.withLock { $0.commitInFlight = false }
        if err == RD_KAFKA_RESP_ERR__NO_OFFSET { return }
        guard let offsets else { return }
        var done: [(TopicPartition, Int64?)] = []
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
        markCommitted(done)
    }

    // MARK: - Rebalances (called on the poll thread, inside rd_kafka_consumer_poll or close)

    fileprivate func rebalance(err: rd_kafka_resp_err_t, partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        guard let partitions else { return }
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let tps = partitions.partitions
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            state.withLock { s in
                for tp in tps {
                    s.generation += 1
                    s.offsets[tp] = PartitionOffsets(generation: s.generation)
                    s.paused.remove(tp)
                    s.resumeWanted.remove(tp)
                }
            }
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
            if paused {
                // Everything else is paused (draining); new partitions must not run ahead.
                rd_kafka_pause_partitions(rk, partitions)
                state.withLock { $0.paused.formUnion(tps) }
            } else {
                // librdkafka keeps a partition's pause across a revoke and a new assignment: one
                // paused here before a rebalance would never be read again.
                rd_kafka_resume_partitions(rk, partitions)
            }
            context.healthy()
            logger.info("kafka partitions assigned", metadata: [LogKey.partitions: "\(tps.map(\.description).sorted())"])
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
            logger.info("kafka partitions revoked", metadata: [LogKey.partitions: "\(tps.map(\.description).sorted())"])
        default:
            logger.error("kafka rebalance error", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
            let dropped = state.withLock { s in
                defer {
                    s.offsets.removeAll()
                    s.rewinds.removeAll()
                }
                return Array(s.offsets.keys)
            }
            for tp in dropped { lagGauge(tp).destroy() }
            rd_kafka_assign(rk, nil)
        }
    }

    /// Seeks partitions back to a message that could not be settled (or to the oldest message
    /// of the partition not yet settled, if that is earlier), then starts a new generation for
    /// each partition whose seek worked: acknowledgements of what was handed out before are
    /// ignored, and those messages come again. Runs on the poll thread, as `take` does, so no
    /// record is taken between the seek and the new generation.
    private func rewindDue() {
        let now = ContinuousClock.now
        let due: [(TopicPartition, Int64?)] = state.withLock { s in
            guard !s.draining, !s.rewinds.isEmpty else { return [] }
            var due: [(TopicPartition, Int64?)] = []
            for (tp, rewind) in s.rewinds where rewind.notBefore <= now {
                guard let offsets = s.offsets[tp] else {
                    s.rewinds[tp] = nil  // revoked meanwhile: its next owner reads it
                    continue
                }
                due.append((tp, min(rewind.offset, offsets.commitPosition ?? rewind.offset)))
            }
            return due
        }
        guard !due.isEmpty else { return }
        let list = makePartitionList(due)
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
        let rewound = state.withLock { s in
            var rewound: [(TopicPartition, Int64?)] = []
            for (tp, offset) in due {
                guard let old = s.offsets[tp], let offset else { continue }
                if failed.contains(tp) {
                    s.rewinds[tp]?.notBefore = .now + .seconds(1)
                    continue
                }
                s.rewinds[tp] = nil
                s.generation += 1
                var fresh = PartitionOffsets(generation: s.generation)
                fresh.committed = old.committed
                s.offsets[tp] = fresh
                s.rewoundTo[tp] = offset
                s.queue.remove(partition: tp)
                if s.paused.contains(tp) { s.resumeWanted.insert(tp) }
                rewound.append((tp, offset))
            }
            return rewound
        }
        guard !rewound.isEmpty else { return }
        logger.warning(
            "kafka partition read again from a message that could not be settled (its dead letter was not written)",
            metadata: [LogKey.partitions: "\(rewound.map { "\($0.0)@\($0.1!)" })"])
    }

    /// `wps_bridge_kafka_consumer_lag`: per assigned partition, the high watermark (as last
    /// fetched, no broker round trip) minus the position not yet done (the next commit).
    private func recordLag() {
        // While a problem is known (brokers down), ask a broker: an answer means it is over,
        // also when no message comes to say so.
        if context.problemIsConnectivity, let tp = state.withLock({ $0.offsets.keys.first }) {
            var low: Int64 = 0
            var high: Int64 = 0
            if rd_kafka_query_watermark_offsets(rk, tp.topic, tp.partition, &low, &high, 500) == RD_KAFKA_RESP_ERR_NO_ERROR { context.healthy() }
        }
        let positions = state.withLock { s in s.offsets.compactMap { tp, o in (o.commitPosition ?? o.committed).map { (tp, $0) } } }
        for (tp, position) in positions {
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

    /// Lets partitions go: records of them not yet handed out are dropped (their next owner
    /// reads them again), in-flight ones get `revokeDrainTimeout` to settle, then the
    /// contiguous acknowledged position is committed.
    private func revoke(_ revoked: Set<TopicPartition>) {
        state.withLock { s in
            var firstDropped: [TopicPartition: Int64] = [:]
            for tp in revoked {
                if let first = s.queue.remove(partition: tp).first { firstDropped[tp] = first.offset }
            }
            s.paused.subtract(revoked)
            s.resumeWanted.subtract(revoked)
            for (tp, offset) in firstDropped { s.offsets[tp]?.drop(from: offset) }
        }
        let deadline = ContinuousClock.now + settings.revokeDrainTimeout
        while ContinuousClock.now < deadline {
            let inFlight = state.withLock { s in revoked.reduce(0) { $0 + (s.offsets[$1]?.inFlight ?? 0) } }
            if inFlight == 0 { break }
            Thread.sleep(forTimeInterval: 0.005)
        }
        commit(sync: true, only: revoked)
        state.withLock { s in
            for tp in revoked {
                s.offsets[tp] = nil
                s.rewinds[tp] = nil
                s.rewindBackoff[tp] = nil
                s.rewoundTo[tp] = nil
            }
        }
        // Its lag is the next owner's to tell.
        for tp in revoked { lagGauge(tp).destroy() }
    }
}
