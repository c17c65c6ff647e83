@testable import KafkaAdapter
import Testing

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
