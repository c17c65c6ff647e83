import DequeModule

/// The records waiting for the dispatcher, handed out one partition after another.
///
/// librdkafka returns what one fetch brought partition by partition, thousands of one partition
/// before the next; handed out in that order, the dispatcher's in-flight window would hold one
/// partition (one lane) at a time. Taking them in turn keeps every partition's lane busy while
/// each partition's own order is kept.
struct RecordQueue {
    private var queues: [TopicPartition: Deque<KafkaRecord>] = [:]
    /// Partitions with records, in the order they take their turn.
    private var turns: Deque<TopicPartition> = []
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    /// Records of one partition.
    func count(of tp: TopicPartition) -> Int { queues[tp]?.count ?? 0 }

    mutating func append(_ record: KafkaRecord) {
        let tp = record.partition
        if queues[tp] == nil {
            queues[tp] = [record]
            turns.append(tp)
        } else {
            queues[tp]!.append(record)
        }
        count += 1
    }

    mutating func popFirst() -> KafkaRecord? {
        guard let tp = turns.popFirst(), var queue = queues.removeValue(forKey: tp), let record = queue.popFirst() else { return nil }
        count -= 1
        if !queue.isEmpty {
            queues[tp] = queue
            turns.append(tp)
        }
        return record
    }

    /// Removes the records of `tp`; returns them in order.
    @discardableResult
    mutating func remove(partition tp: TopicPartition) -> Deque<KafkaRecord> {
        guard let removed = queues.removeValue(forKey: tp) else { return [] }
        turns.removeAll { $0 == tp }
        count -= removed.count
        return removed
    }
}
