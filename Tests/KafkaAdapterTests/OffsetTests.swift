import Testing

@testable import KafkaAdapter

@Suite struct PartitionOffsetsTests {
    @Test func commitsOnlyUpToTheFirstUnsettledOffset() {
        var p = PartitionOffsets(generation: 1)
        #expect(p.commitPosition == nil && !p.hasNewCommit)
        for o in Int64(10)...14 { p.taken(o) }
        #expect(p.commitPosition == 10)
        p.ack(11)
        p.ack(13)
        #expect(p.commitPosition == 10)
        p.ack(10)
        #expect(p.commitPosition == 12)
        p.ack(12)
        #expect(p.commitPosition == 14)
        p.ack(14)
        #expect(p.commitPosition == 15 && p.inFlight == 0)
        p.committed = 15
        #expect(!p.hasNewCommit)
    }

    @Test func aFailedOffsetHoldsTheCommitBelowIt() {
        var p = PartitionOffsets(generation: 1)
        for o in Int64(0)..<4 { p.taken(o) }
        p.ack(0)
        p.fail(1)
        p.ack(2)
        p.ack(3)
        #expect(p.commitPosition == 1)
        #expect(p.inFlight == 0)
    }

    @Test func droppedOffsetsAreNotWaitedForNorSkipped() {
        var p = PartitionOffsets(generation: 1)
        for o in Int64(0)..<6 { p.taken(o) }
        p.ack(0)
        p.ack(1)
        p.drop(from: 3)
        #expect(p.inFlight == 1)
        p.ack(2)
        #expect(p.commitPosition == 3)
    }
}

@Suite struct RecordQueueTests {
    func record(_ partition: Int32, _ offset: Int64) -> KafkaRecord {
        KafkaRecord(
            partition: TopicPartition(topic: "t", partition: partition), offset: offset, generation: 1, key: nil, payload: [], headers: [],
            timestamp: nil)
    }

    @Test func partitionsTakeTurnsAndKeepTheirOrder() {
        var queue = RecordQueue()
        // As librdkafka returns them: a run of partition 0, then partition 1, then 2.
        for offset in 0..<3 { queue.append(record(0, Int64(offset))) }
        for offset in 0..<2 { queue.append(record(1, Int64(offset))) }
        queue.append(record(2, 0))
        #expect(queue.count == 6 && queue.count(of: TopicPartition(topic: "t", partition: 0)) == 3)
        var taken: [String] = []
        while let r = queue.popFirst() { taken.append("\(r.partition.partition):\(r.offset)") }
        #expect(taken == ["0:0", "1:0", "2:0", "0:1", "1:1", "0:2"])
        #expect(queue.isEmpty)
    }

    @Test func removingAPartitionLeavesTheOthersInTurn() {
        var queue = RecordQueue()
        for offset in 0..<2 {
            queue.append(record(0, Int64(offset)))
            queue.append(record(1, Int64(offset)))
        }
        let removed = queue.remove(partition: TopicPartition(topic: "t", partition: 0))
        #expect(removed.map(\.offset) == [0, 1])
        #expect(queue.count == 2)
        #expect(queue.popFirst()?.partition.partition == 1 && queue.popFirst()?.offset == 1 && queue.popFirst() == nil)
        queue.append(record(0, 5))
        #expect(queue.popFirst()?.offset == 5)
    }
}
