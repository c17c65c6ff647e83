import BridgeCore

/// What a Kafka consumer knows besides librdkafka, as a state machine: `next`, `settle`, the
/// poll thread, the rebalance callbacks and `close` report events, and each returns what to do.
///
/// librdkafka calls and continuations stay outside (`KafkaConsumer`); the machine only decides,
/// and the tests drive it transition by transition (`KafkaConsumerStateTests`).
struct KafkaConsumerState {
    enum Phase: Equatable {
        /// Records are handed out.
        case consuming
        /// `run` ended: nothing more is handed out. The poll thread keeps polling with every
        /// partition paused, so the group membership holds until `close`.
        case draining
        /// `close` was called: the poll thread commits, leaves the group and ends.
        case closing
        /// The poll thread ended (or never started).
        case closed
    }

    /// A partition read again from a message that could not be settled, and not before when.
    struct Rewind: Equatable {
        var offset: Int64
        var notBefore: ContinuousClock.Instant
    }

    /// One assigned partition.
    struct Partition {
        var offsets: PartitionOffsets
        /// Paused, because its records pile up here or because the consumer drains.
        var paused = false
        /// Paused because its records piled up, and has room again: resumed at the next poll.
        var resumeWanted = false
        var rewind: Rewind?
        /// The wait before the next rewind: doubles while its rewinds keep failing.
        var rewindBackoff: Duration?
        /// Where it was last read again from: the backoff is over once that message settled.
        var rewoundTo: Int64?
    }

    /// What the poll thread does before its next poll.
    enum PollStep: Equatable {
        case poll
        /// Draining began: pause every assigned partition (then report `pausedAll`).
        case pauseAll
        /// Resume these partitions, which have room again.
        case resume(Set<TopicPartition>)
        /// `close` was called: commit, leave the group, end the thread.
        case close
    }

    /// What `take` does with a record that came from librdkafka.
    enum Received: Equatable {
        /// Not (or no longer) assigned: dropped; its next owner reads it from the committed offset.
        case dropped
        case queued
        /// Queued, and its partition reached its share of `highWater`: pause it.
        case queuedPause
    }

    /// What `next` gets.
    enum Next {
        case record(KafkaRecord)
        /// Draining: no more records.
        case end
        /// Nothing queued: wait for `received`.
        case empty
    }

    private(set) var phase = Phase.consuming
    private(set) var partitions: [TopicPartition: Partition] = [:]
    private var queue = RecordQueue()
    /// Counts assignments and rewinds: a record's generation tells whether its partition was
    /// assigned again or read again since it was handed out.
    private var generation = 0
    private var wakePoll = false
    /// Every assigned partition was paused for draining (new ones are paused as they come).
    private(set) var pausedAll = false
    /// An asynchronous commit was started and its callback has not come yet.
    private(set) var commitInFlight = false
    /// Partitions being revoked: their last settlement wakes the revoke.
    private var revoking: Set<TopicPartition> = []
    /// Records waiting for the dispatcher, all partitions together, before a partition is paused.
    let highWater: Int

    init(highWater: Int) {
        self.highWater = highWater
    }

    var queuedCount: Int { queue.count }

    /// A partition's share of `highWater`; it is resumed at three quarters of it: a pause drops
    /// what librdkafka fetched ahead for the partition, and the records still queued must last
    /// until the fetch after the resume comes back (a quarter left the lane idle for most of it:
    /// a batched drain on Tansu went from 7,600 to 8,900 msg/s).
    private var partitionHighWater: Int { max(32, highWater / max(1, partitions.count)) }
    private var partitionLowWater: Int { partitionHighWater * 3 / 4 }

    // MARK: - Records

    /// A record came from librdkafka. `make` builds it with its partition's generation.
    mutating func received(_ tp: TopicPartition, offset: Int64, make: (_ generation: Int) -> KafkaRecord) -> Received {
        guard partitions[tp] != nil else { return .dropped }
        // Changed in place (`partitions[tp]!.`): a copy taken out of the dictionary would share
        // the tracker's storage, and each change would then copy all of it.
        partitions[tp]!.offsets.taken(offset)
        queue.append(make(partitions[tp]!.offsets.generation))
        guard !partitions[tp]!.paused, queue.count(of: tp) >= partitionHighWater else { return .queued }
        // Marked in the same step: `next` may empty the queue before the pause is made, and must
        // then see the partition as paused to ask for its resume.
        partitions[tp]!.paused = true
        return .queuedPause
    }

    /// The pause of a partition failed: it is not paused.
    mutating func pauseFailed(_ tp: TopicPartition) {
        partitions[tp]?.paused = false
    }

    /// The dispatcher asks for the next record.
    mutating func next() -> Next {
        guard phase == .consuming else { return .end }
        guard let record = queue.popFirst() else { return .empty }
        let tp = record.partition
        if partitions[tp]?.paused == true, partitions[tp]?.resumeWanted == false, queue.count(of: tp) <= partitionLowWater {
            partitions[tp]!.resumeWanted = true
            wakePoll = true
        }
        return .record(record)
    }

    /// A resume became wanted since the last call: the poll thread should stop waiting for
    /// records (with every partition paused it would wait its whole poll timeout) and resume it.
    mutating func takeWakePoll() -> Bool {
        defer { wakePoll = false }
        return wakePoll
    }

    /// A record was settled. Returns whether a revoke waiting for its partition may look again.
    /// A record that failed holds its partition's commit and, unless draining, has its partition
    /// read again from it after a backoff (1 s doubling to 30 s).
    mutating func settle(_ record: KafkaRecord, _ outcome: DeliveryOutcome, now: ContinuousClock.Instant) -> Bool {
        let tp = record.partition
        guard partitions[tp]?.offsets.generation == record.generation else { return false }
        switch outcome {
        case .done:
            partitions[tp]!.offsets.ack(record.offset)
            if partitions[tp]!.rewoundTo == record.offset {
                partitions[tp]!.rewoundTo = nil
                partitions[tp]!.rewindBackoff = nil
            }
        case .failed:
            partitions[tp]!.offsets.fail(record.offset)
            if phase == .consuming {
                let backoff = partitions[tp]!.rewindBackoff ?? .seconds(1)
                let old = partitions[tp]!.rewind
                partitions[tp]!.rewind = Rewind(
                    offset: min(old?.offset ?? record.offset, record.offset), notBefore: old?.notBefore ?? now + backoff)
                partitions[tp]!.rewindBackoff = min(backoff * 2, .seconds(30))
            }
        }
        return revoking.contains(tp) && inFlight(of: revoking) == 0
    }

    // MARK: - Lifecycle

    /// `run` ended: nothing more is handed out (a waiting `next` gets `nil`).
    mutating func drain() {
        if phase == .consuming { phase = .draining }
    }

    /// `close` was called. Returns whether the consumer is closed already (nothing to wait for).
    mutating func requestClose() -> Bool {
        switch phase {
        case .consuming, .draining:
            phase = .closing
            return false
        case .closing: return false
        case .closed: return true
        }
    }

    /// The poll thread ended, or never started.
    mutating func threadEnded() {
        phase = .closed
    }

    /// The poll thread is about to poll.
    mutating func pollStep() -> PollStep {
        if phase == .closing || phase == .closed { return .close }
        if phase == .draining {
            return pausedAll ? .poll : .pauseAll
        }
        var resume: Set<TopicPartition> = []
        for (tp, partition) in partitions where partition.resumeWanted {
            partitions[tp]!.resumeWanted = false
            resume.insert(tp)
        }
        return resume.isEmpty ? .poll : .resume(resume)
    }

    /// These partitions were paused (all assigned ones when `all`).
    mutating func paused(_ tps: some Sequence<TopicPartition>, all: Bool) {
        for tp in tps { partitions[tp]?.paused = true }
        if all { pausedAll = true }
    }

    /// These partitions were resumed.
    mutating func resumed(_ tps: some Sequence<TopicPartition>) {
        for tp in tps { partitions[tp]?.paused = false }
    }

    // MARK: - Rebalances

    /// Partitions were assigned, each with a new generation. Returns whether to pause them
    /// (draining: new partitions must not run ahead); otherwise they are resumed, since
    /// librdkafka keeps a partition's pause across a revoke and a new assignment.
    mutating func assigned(_ tps: [TopicPartition]) -> Bool {
        for tp in tps {
            generation += 1
            partitions[tp] = Partition(offsets: PartitionOffsets(generation: generation), paused: pausedAll)
        }
        return pausedAll
    }

    /// A revoke begins: records of these partitions not yet handed out are dropped (their next
    /// owner reads them again); the revoke then waits for the in-flight ones (`inFlight(of:)`).
    mutating func revokeBegins(_ tps: Set<TopicPartition>) {
        for tp in tps {
            if let first = queue.remove(partition: tp).first { partitions[tp]?.offsets.drop(from: first.offset) }
            partitions[tp]?.paused = false
            partitions[tp]?.resumeWanted = false
        }
        revoking.formUnion(tps)
    }

    /// Records of these partitions handed out and not yet settled.
    func inFlight(of tps: Set<TopicPartition>) -> Int {
        tps.reduce(0) { $0 + (partitions[$1]?.offsets.inFlight ?? 0) }
    }

    /// The revoke committed what was done: the partitions are gone.
    mutating func revoked(_ tps: Set<TopicPartition>) {
        for tp in tps { partitions[tp] = nil }
        revoking.subtract(tps)
    }

    /// The rebalance failed: every partition is let go. Returns them.
    mutating func rebalanceFailed() -> [TopicPartition] {
        defer { partitions.removeAll() }
        for tp in partitions.keys { queue.remove(partition: tp) }
        return Array(partitions.keys)
    }

    // MARK: - Commits

    /// What to commit: the contiguous settled position of every partition (of `only` these) that
    /// moved. An asynchronous commit is not started while one is under way.
    mutating func commitEntries(sync: Bool, only: Set<TopicPartition>? = nil) -> [(TopicPartition, Int64)] {
        if !sync && commitInFlight { return [] }
        var entries: [(TopicPartition, Int64)] = []
        for (tp, partition) in partitions where only?.contains(tp) ?? true {
            if partition.offsets.hasNewCommit, let position = partition.offsets.commitPosition { entries.append((tp, position)) }
        }
        if !sync && !entries.isEmpty { commitInFlight = true }
        return entries
    }

    /// The asynchronous commit's callback came, or the commit could not be started.
    mutating func asyncCommitEnded() {
        commitInFlight = false
    }

    /// These positions are committed.
    mutating func committed(_ entries: [(TopicPartition, Int64)]) {
        for (tp, position) in entries where partitions[tp] != nil {
            if partitions[tp]!.offsets.committed.map({ position > $0 }) ?? true { partitions[tp]!.offsets.committed = position }
        }
    }

    // MARK: - Rewinds

    /// Partitions due to be read again, and where from: the message that could not be settled,
    /// or the oldest one not yet settled if that is earlier. None while draining.
    mutating func dueRewinds(now: ContinuousClock.Instant) -> [(TopicPartition, Int64)] {
        guard phase == .consuming else { return [] }
        var due: [(TopicPartition, Int64)] = []
        for (tp, partition) in partitions {
            guard let rewind = partition.rewind, rewind.notBefore <= now else { continue }
            due.append((tp, min(rewind.offset, partition.offsets.commitPosition ?? rewind.offset)))
        }
        return due
    }

    /// The seeks of `due` were made; those in `failed` are tried again a second later. Each
    /// partition read again starts a new generation (acknowledgements of what was handed out
    /// before are ignored: those messages come again). Returns the partitions read again.
    mutating func rewound(_ due: [(TopicPartition, Int64)], failed: Set<TopicPartition>, now: ContinuousClock.Instant) -> [(TopicPartition, Int64)] {
        var rewound: [(TopicPartition, Int64)] = []
        for (tp, offset) in due {
            guard let old = partitions[tp] else { continue }
            if failed.contains(tp) {
                partitions[tp]!.rewind?.notBefore = now + .seconds(1)
                continue
            }
            generation += 1
            var fresh = PartitionOffsets(generation: generation)
            fresh.committed = old.offsets.committed
            partitions[tp] = Partition(
                offsets: fresh, paused: old.paused, resumeWanted: old.paused, rewind: nil, rewindBackoff: old.rewindBackoff, rewoundTo: offset)
            queue.remove(partition: tp)
            rewound.append((tp, offset))
        }
        return rewound
    }

    /// Where each partition stands for the lag: the position not yet done, or the committed one.
    var lagPositions: [(TopicPartition, Int64)] {
        partitions.compactMap { tp, p in (p.offsets.commitPosition ?? p.offsets.committed).map { (tp, $0) } }
    }
}
