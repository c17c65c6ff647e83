import BridgeCore
import Testing

@testable import KafkaAdapter

/// The Kafka consumer's state machine, transition by transition (no broker: what librdkafka
/// would report is fed in as events).
@Suite struct KafkaConsumerStateTests {
    typealias State = KafkaConsumerState
    let p0 = TopicPartition(topic: "t", partition: 0)
    let p1 = TopicPartition(topic: "t", partition: 1)
    let start = ContinuousClock.now

    /// Feeds a record as the poll thread would; returns what the machine said.
    @discardableResult
    func receive(_ s: inout State, _ tp: TopicPartition, _ offset: Int64) -> State.Received {
        s.received(tp, offset: offset) { generation in
            KafkaRecord(partition: tp, offset: offset, generation: generation, key: nil, payload: [], headers: [], timestamp: nil)
        }
    }

    func next(_ s: inout State) -> KafkaRecord? {
        if case .record(let record) = s.next() { return record }
        return nil
    }

    @Test func recordsOfAssignedPartitionsAreHandedOutInTurnAndOthersDropped() {
        var s = State(highWater: 8192)
        _ = s.assigned([p0, p1])
        receive(&s, p0, 0)
        receive(&s, p0, 1)
        receive(&s, p1, 0)
        let dropped = receive(&s, TopicPartition(topic: "t", partition: 9), 0)
        #expect(dropped == .dropped, "not assigned: its owner reads it")
        var order: [String] = []
        while let r = next(&s) { order.append("\(r.partition.partition)@\(r.offset)") }
        #expect(order == ["0@0", "1@0", "0@1"])
        guard case .empty = s.next() else {
            Issue.record("an empty queue waits")
            return
        }
        #expect(s.inFlight(of: [p0, p1]) == 3)
    }

    /// Resumed at three quarters: a pause drops what librdkafka fetched ahead, and the records
    /// still queued must last until the next fetch comes back.
    @Test func aPartitionThatPilesUpIsPausedAndResumedAtThreeQuarters() {
        var s = State(highWater: 64)  // two partitions: 32 each, resumed at 24
        _ = s.assigned([p0, p1])
        var said: [State.Received] = []
        for o in Int64(0)..<32 { said.append(receive(&s, p0, o)) }
        #expect(said.dropLast().allSatisfy { $0 == .queued } && said.last == .queuedPause)
        #expect(s.partitions[p0]?.paused == true && s.partitions[p1]?.paused == false)
        #expect(receive(&s, p0, 32) == .queued, "paused once")
        for _ in 0..<8 { _ = next(&s) }
        #expect(s.pollStep() == .poll, "25 left: above three quarters")
        var wakes = [s.takeWakePoll()]
        _ = next(&s)
        wakes += [s.takeWakePoll(), s.takeWakePoll()]
        _ = next(&s)
        wakes.append(s.takeWakePoll())
        // The poll thread is woken once for the resume, not again while it is pending.
        #expect(wakes == [false, true, false, false])
        #expect(s.pollStep() == .resume([p0]))
        #expect(s.pollStep() == .poll, "asked once")
        s.resumed([p0])
        #expect(s.partitions[p0]?.paused == false)
        // A pause that failed is not a pause.
        var f = State(highWater: 32)
        _ = f.assigned([p0])
        for o in Int64(0)..<32 { receive(&f, p0, o) }
        f.pauseFailed(p0)
        #expect(f.partitions[p0]?.paused == false)
    }

    @Test func settlementsMoveTheCommitAndOnlyOnceAnAsyncCommitCameBack() {
        var s = State(highWater: 8192)
        _ = s.assigned([p0])
        for o in Int64(5)...7 { receive(&s, p0, o) }
        let records = [next(&s)!, next(&s)!, next(&s)!]
        _ = s.settle(records[1], .done, now: start)
        #expect(s.commitEntries(sync: false).isEmpty == false, "nothing committed yet: 5 is the position")
        #expect(s.commitInFlight)
        _ = s.settle(records[0], .done, now: start)
        #expect(s.commitEntries(sync: false).isEmpty, "an async commit is under way")
        let sync = s.commitEntries(sync: true)
        #expect(sync.map(\.1) == [7], "a sync commit does not wait")
        s.committed(sync)
        s.asyncCommitEnded()
        #expect(s.commitEntries(sync: false).isEmpty, "7 is committed, 7 is in flight")
        s.committed([(p0, 6)])
        #expect(s.partitions[p0]?.offsets.committed == 7, "an older position does not move it back")
        _ = s.settle(records[2], .done, now: start)
        #expect(s.commitEntries(sync: true).map(\.1) == [8])
    }

    @Test func aFailedRecordRewindsItsPartitionAfterABackoffThatDoubles() {
        var s = State(highWater: 8192)
        _ = s.assigned([p0])
        for o in Int64(0)...2 { receive(&s, p0, o) }
        let r0 = next(&s)!
        let r1 = next(&s)!
        _ = s.settle(r0, .done, now: start)
        _ = s.settle(r1, .failed("dead letter not written"), now: start)
        #expect(s.dueRewinds(now: start).isEmpty, "not before a second")
        let due = s.dueRewinds(now: start + .seconds(1))
        #expect(due.map(\.1) == [1])
        // The seek failed: again a second later.
        _ = s.rewound(due, failed: [p0], now: start + .seconds(1))
        #expect(s.dueRewinds(now: start + .milliseconds(1500)).isEmpty)
        let again = s.dueRewinds(now: start + .seconds(2))
        let rewound = s.rewound(again, failed: [], now: start + .seconds(2))
        #expect(rewound.map(\.1) == [1])
        #expect(s.queuedCount == 0, "what was queued comes again from the broker")
        // A new generation: the record handed out before no longer counts.
        #expect(s.settle(r1, .done, now: start) == false)
        #expect(s.partitions[p0]?.rewoundTo == 1)
        receive(&s, p0, 1)
        let again1 = next(&s)!
        #expect(again1.generation != r1.generation)
        // It fails again: the wait is 2 s now.
        _ = s.settle(again1, .failed("still not written"), now: start + .seconds(3))
        #expect(s.dueRewinds(now: start + .seconds(4)).isEmpty)
        #expect(s.dueRewinds(now: start + .seconds(5)).map(\.1) == [1])
        // Once the record read again settles, the backoff is over.
        var t = State(highWater: 8192)
        _ = t.assigned([p0])
        receive(&t, p0, 0)
        let f = next(&t)!
        _ = t.settle(f, .failed("x"), now: start)
        _ = t.rewound(t.dueRewinds(now: start + .seconds(1)), failed: [], now: start + .seconds(1))
        receive(&t, p0, 0)
        _ = t.settle(next(&t)!, .done, now: start)
        #expect(t.partitions[p0]?.rewindBackoff == nil && t.partitions[p0]?.rewoundTo == nil)
    }

    @Test func aRevokeDropsWhatWasQueuedAndIsWokenByTheLastSettlement() {
        var s = State(highWater: 8192)
        _ = s.assigned([p0, p1])
        for o in Int64(0)...3 { receive(&s, p0, o) }
        receive(&s, p1, 0)
        let a = next(&s)!  // p0@0
        _ = next(&s)  // p1@0
        let b = next(&s)!  // p0@1
        s.revokeBegins([p0])
        #expect(s.queuedCount == 0 && s.inFlight(of: [p0]) == 2)
        #expect(s.settle(a, .done, now: start) == false, "one still in flight")
        #expect(s.settle(b, .done, now: start) == true, "the last one wakes the revoke")
        #expect(s.commitEntries(sync: true, only: [p0]).map(\.1) == [2], "the dropped 2 and 3 are read again by the next owner")
        s.revoked([p0])
        #expect(s.partitions[p0] == nil && s.partitions[p1] != nil)
        #expect(s.settle(a, .done, now: start) == false, "a revoked partition's records are ignored")
        // Assigned again: a new generation.
        _ = s.assigned([p0])
        #expect(s.settle(b, .done, now: start) == false)
        #expect(s.partitions[p0]?.offsets.commitPosition == nil)
    }

    @Test func drainingEndsNextPausesEverythingAndStopsRewinds() {
        var s = State(highWater: 8192)
        _ = s.assigned([p0])
        receive(&s, p0, 0)
        receive(&s, p0, 1)
        let r = next(&s)!
        s.drain()
        #expect(s.phase == .draining)
        guard case .end = s.next() else {
            Issue.record("draining hands out nothing")
            return
        }
        #expect(s.pollStep() == .pauseAll)
        #expect(s.pollStep() == .pauseAll, "until the pause was made")
        s.paused([p0], all: true)
        #expect(s.pollStep() == .poll && s.partitions[p0]?.paused == true)
        #expect(s.assigned([p1]) == true, "new partitions are paused too")
        #expect(s.partitions[p1]?.paused == true)
        _ = s.settle(r, .failed("not dispatched: shutting down"), now: start)
        #expect(s.dueRewinds(now: start + .seconds(60)).isEmpty, "no rewinds while draining")
        #expect(s.commitEntries(sync: true).map(\.1) == [0], "the failed record holds the commit at its offset")
    }

    @Test func closeGoesThroughClosingToClosed() {
        var s = State(highWater: 8192)
        #expect(s.requestClose() == false && s.phase == .closing, "the poll thread is still to end")
        #expect(s.pollStep() == .close)
        s.drain()
        #expect(s.phase == .closing, "draining does not undo a close")
        #expect(s.requestClose() == false, "a second closer waits too")
        s.threadEnded()
        #expect(s.phase == .closed && s.requestClose() == true, "nothing left to wait for")
        var unstarted = State(highWater: 8192)
        unstarted.threadEnded()
        #expect(unstarted.requestClose() == true)
    }

    @Test func aFailedRebalanceLetsEveryPartitionGo() {
        var s = State(highWater: 8192)
        _ = s.assigned([p0, p1])
        receive(&s, p0, 0)
        receive(&s, p1, 0)
        let gone = s.rebalanceFailed()
        #expect(Set(gone) == [p0, p1])
        #expect(s.partitions.isEmpty && s.queuedCount == 0)
        guard case .empty = s.next() else {
            Issue.record("nothing of a partition let go is handed out")
            return
        }
    }
}
