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

    /// The state machine, and the continuations it decides about.
    struct Locked {
        var machine: KafkaConsumerState
        /// `next`, waiting for a record.
        var waiter: CheckedContinuation<KafkaRecord?, Never>?
        /// Whoever waits in `close` (a reload and the shutdown may both).
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        /// `pollQueue` is not destroyed yet.
        var pollQueueAlive = true
    }

    let settings: Settings
    let logger: Logger
    let context: KafkaClientContext
    let rk: OpaquePointer
    /// The consumer queue the poll thread waits on, to wake it (`rd_kafka_queue_yield`).
    let pollQueue: OpaquePointer
    let state: Mutex<Locked>
    /// Signalled when the last in-flight record of partitions being revoked settles.
    let revokeSettled = DispatchSemaphore(value: 0)
    /// Topics whose "cannot be consumed" was logged. Touched by the poll thread only.
    private var unknownTopicsLogged: Set<String> = []

    init(settings: Settings, logger: Logger) throws(KafkaError) {
        self.settings = settings
        self.logger = logger
        self.context = KafkaClientContext(logger: logger, role: "consumer")
        self.state = Mutex(Locked(machine: KafkaConsumerState(highWater: settings.highWater)))
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
        self.pollQueue = rd_kafka_queue_get_consumer(rk)
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
        destroyPollQueue()
        rd_kafka_destroy(rk)
        state.withLock { $0.machine.threadEnded() }
    }

    private func destroyPollQueue() {
        let alive = state.withLock { s in
            defer { s.pollQueueAlive = false }
            return s.pollQueueAlive
        }
        if alive { rd_kafka_queue_destroy(pollQueue) }
    }

    /// The next record, or nil once the consumer is draining or the task is cancelled.
    func next() async -> KafkaRecord? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<KafkaRecord?, Never>) in
                let immediate: KafkaRecord?? = state.withLock { s in
                    if Task.isCancelled { return .some(nil) }
                    let next = s.machine.next()
                    // Under the lock, so that the queue is not destroyed meanwhile.
                    if s.machine.takeWakePoll(), s.pollQueueAlive { rd_kafka_queue_yield(pollQueue) }
                    switch next {
                    case .record(let record): return .some(record)
                    case .end: return .some(nil)
                    case .empty:
                        s.waiter = continuation
                        return .none
                    }
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            state.withLock { s in
                defer { s.waiter = nil }
                return s.waiter
            }?.resume(returning: nil)
        }
    }

    /// Settles one record: acknowledged offsets may be committed. A record that failed (its
    /// dead letter could not be written) holds its partition's commit; unless the consumer is
    /// draining, the partition is read again from it after a backoff (1 s doubling to 30 s).
    func settle(_ record: KafkaRecord, _ outcome: DeliveryOutcome) {
        if state.withLock({ $0.machine.settle(record, outcome, now: .now) }) { revokeSettled.signal() }
    }

    /// Stops handing out records; the partitions are paused at the next poll.
    func drain() {
        state.withLock { s in
            s.machine.drain()
            defer { s.waiter = nil }
            return s.waiter
        }?.resume(returning: nil)
    }

    /// Commits what was acknowledged, leaves the group and frees the client. Call once, after
    /// every record handed out was settled.
    func close() async {
        drain()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.machine.requestClose() { return true }
                s.closeWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    // MARK: - The poll thread

    private func pollLoop() {
        var lastCommit = ContinuousClock.now
        var lastLag = ContinuousClock.now
        polling: while true {
            switch state.withLock({ $0.machine.pollStep() }) {
            case .close: break polling
            case .pauseAll: setPaused(true)
            case .resume(let partitions): setPaused(false, only: partitions)
            case .poll: break
            }
            if let message = rd_kafka_consumer_poll(rk, 100) {
                take(message)
                rd_kafka_message_destroy(message)
            }
            if ContinuousClock.now - lastCommit >= settings.commitInterval {
                lastCommit = .now
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
        destroyPollQueue()
        rd_kafka_destroy(rk)
        let waiters = state.withLock { s in
            s.machine.threadEnded()
            defer { s.closeWaiters.removeAll() }
            return s.closeWaiters
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
        let (received, waiter) = state.withLock { s in
            let received = s.machine.received(tp, offset: m.offset) { generation in
                KafkaRecord(
                    partition: tp, offset: m.offset, generation: generation, key: key, payload: payload, headers: headers,
                    timestamp: tsType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : ts)
            }
            // Someone waits only while nothing was queued: hand this record over at once.
            guard received != .dropped, let waiter = s.waiter, case .record(let record) = s.machine.next() else {
                return (received, nil as (CheckedContinuation<KafkaRecord?, Never>, KafkaRecord)?)
            }
            // This thread polls next anyway: no need to wake it.
            _ = s.machine.takeWakePoll()
            s.waiter = nil
            return (received, (waiter, record))
        }
        if let (continuation, record) = waiter { continuation.resume(returning: record) }
        if received == .queuedPause {
            // On the poll thread, which also makes the resumes: the pause comes first.
            let list = makePartitionList([(tp, nil)])
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let err = rd_kafka_pause_partitions(rk, list)
            if err != RD_KAFKA_RESP_ERR_NO_ERROR {
                logger.warning("kafka pause failed", metadata: [LogKey.kafkaError: "\(String(cString: rd_kafka_err2str(err)))"])
                state.withLock { $0.machine.pauseFailed(tp) }
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
}
