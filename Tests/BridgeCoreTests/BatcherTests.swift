import Testing

@testable import BridgeCore

/// The batcher of issue 20, step by step with a clock of its own.
@Suite struct BatcherTests {
    typealias B = Batcher<String, String>
    let t0 = ContinuousClock.now
    func at(_ ms: Int) -> ContinuousClock.Instant { t0 + .milliseconds(ms) }
    func limits(_ messages: Int = 100, bytes: Int = 1 << 20, delay: Duration = .milliseconds(10)) -> B.Limits {
        B.Limits(maxMessages: messages, maxBytes: bytes, maxDelay: delay)
    }

    @Test func fullBatchesGoAtOnceAndTheRestAfterTheDelay() {
        var b = B(limits: limits(100))
        for i in 0..<250 { b.append("m\(i)", key: "A", bytes: 10, now: at(0)) }
        let first = b.takeDue(now: at(0))
        let second = b.takeDue(now: at(0))
        #expect(first?.items.count == 100 && first?.items.first == "m0" && second?.items.first == "m100")
        #expect(b.takeDue(now: at(5)) == nil, "50 wait for company")
        #expect(b.nextDeadline(now: at(5)) == at(10))
        let last = b.takeDue(now: at(10))
        #expect(last?.items.count == 50 && last?.items.last == "m249")
        #expect(b.isEmpty && b.nextDeadline(now: at(10)) == nil)
    }

    @Test func bytesSplitBatchesAndAnOversizeMessageGoesAlone() {
        var b = B(limits: limits(100, bytes: 100))
        b.append("a", key: "A", bytes: 60, now: at(0))
        b.append("b", key: "A", bytes: 60, now: at(0))  // would pass 100: "a" goes alone
        b.append("big", key: "A", bytes: 500, now: at(0))
        b.append("c", key: "A", bytes: 10, now: at(0))
        #expect(b.takeDue(now: at(0))?.items == ["a"])
        #expect(b.takeDue(now: at(0))?.items == ["b"], "sealed when the big one could not join")
        #expect(b.takeDue(now: at(0))?.items == ["big"])
        #expect(b.takeDue(now: at(0)) == nil)
        #expect(b.takeDue(now: at(10))?.items == ["c"])
    }

    @Test func aZeroDelayIsDueAtOnceAndUnbatchableItemsGoAlone() {
        var b = B(limits: limits(delay: .zero))
        b.append("x", key: "A", bytes: 1, now: at(0))
        #expect(b.takeDue(now: at(0))?.items == ["x"])
        var u = B(limits: limits())
        u.append("y", key: nil, bytes: 1, now: at(0))
        let alone = u.takeDue(now: at(0))
        #expect(alone?.items == ["y"] && alone?.key == nil)
    }

    /// Each target keeps its order; a full batch may go before another target's batch still
    /// filling, never before an older one of its own target.
    @Test func targetsKeepTheirOrder() {
        var b = B(limits: limits(2))
        b.append("a1", key: "A", bytes: 1, now: at(0))
        b.append("b1", key: "B", bytes: 1, now: at(1))
        b.append("b2", key: "B", bytes: 1, now: at(2))  // B is full
        b.append("a2", key: "A", bytes: 1, now: at(3))  // A is full
        b.append("b3", key: "B", bytes: 1, now: at(4))
        #expect(b.takeDue(now: at(4))?.items == ["a1", "a2"])
        #expect(b.takeDue(now: at(4))?.items == ["b1", "b2"])
        #expect(b.takeDue(now: at(4)) == nil)
        #expect(b.takeDue(now: at(14))?.items == ["b3"])
    }

    @Test func conflationKeepsTheNewestPerKeyInItsPlace() {
        var b = B(limits: limits())
        b.append("x1", key: "A", bytes: 5, conflationKey: "x", now: at(0))
        b.append("y1", key: "A", bytes: 5, conflationKey: "y", now: at(0))
        b.append("x2", key: "A", bytes: 5, conflationKey: "x", now: at(0))
        b.append("z", key: "A", bytes: 5, now: at(0))
        let batch = b.takeDue(now: at(10))
        #expect(batch?.items == ["y1", "x2", "z"] && batch?.superseded == ["x1"] && batch?.bytes == 15)
        // Not across a batch that was taken: x3 goes in a batch of its own.
        b.append("x3", key: "A", bytes: 5, conflationKey: "x", now: at(20))
        #expect(b.takeDue(now: at(30))?.superseded == [])
    }

    /// A replaced message does not count towards maxMessages, and a key replaced many times is
    /// found at once (no search through the batch).
    @Test func replacedMessagesLeaveRoom() {
        var b = B(limits: limits(2))
        for i in 0..<1000 { b.append("x\(i)", key: "A", bytes: 1, conflationKey: "x", now: at(0)) }
        #expect(b.takeDue(now: at(0)) == nil, "one live message: still filling")
        b.append("y", key: "A", bytes: 1, conflationKey: "y", now: at(0))
        let batch = b.takeDue(now: at(0))
        #expect(batch?.items == ["x999", "y"] && batch?.superseded.count == 999 && batch?.bytes == 2)
        #expect(b.isEmpty && b.count == 0)
    }

    /// A newer message that does not fit the filling batch takes what it replaced along: the
    /// older one is settled by the send that carries the newer.
    @Test func whatIsSupersededGoesWithTheNewerMessage() {
        var b = B(limits: limits(100, bytes: 10))
        b.append("x1", key: "A", bytes: 4, conflationKey: "x", now: at(0))
        b.append("y1", key: "A", bytes: 4, conflationKey: "y", now: at(0))
        b.append("x2", key: "A", bytes: 9, conflationKey: "x", now: at(0))
        let first = b.takeDue(now: at(0))
        #expect(first?.items == ["y1"] && first?.superseded == [])
        let second = b.takeDue(now: at(10))
        #expect(second?.items == ["x2"] && second?.superseded == ["x1"])
    }

    /// Whatever comes in comes out once, sent or superseded, and each target's sent items keep
    /// their order.
    @Test func nothingIsLostOrRepeated() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            var b = B(limits: limits(Int.random(in: 1...7, using: &generator), bytes: 40, delay: .milliseconds(3)))
            var input: [String] = []
            var out: [B.Batch] = []
            for i in 0..<300 {
                let key = ["A", "B", "C"].randomElement(using: &generator)!
                let item = "\(key)\(i)"
                input.append(item)
                b.append(
                    item, key: key, bytes: Int.random(in: 1...50, using: &generator), conflationKey: Bool.random() ? "k\(i % 5)" : nil, now: at(i))
                while let batch = b.takeDue(now: at(i)) { out.append(batch) }
            }
            out += b.flush()
            let everything = out.flatMap { $0.items + $0.superseded }
            #expect(everything.sorted() == input.sorted())
            for key in ["A", "B", "C"] {
                let sent = out.flatMap(\.items).filter { $0.hasPrefix(key) }.map { Int($0.dropFirst())! }
                #expect(sent == sent.sorted(), "\(key) in order")
            }
        }
    }

    @Test func thePayloadIsAJSONArray() {
        let elements = [
            BatchPayload.element(Array(#"{"a":1}"#.utf8), dataType: .json)!, BatchPayload.element(Array("say \"hi\"\n".utf8), dataType: .text)!,
        ]
        #expect(String(decoding: BatchPayload.assemble(elements), as: UTF8.self) == #"[{"a":1},"say \"hi\"\n"]"#)
        #expect(BatchPayload.element([0, 1], dataType: .binary) == nil, "binary cannot be batched")
        #expect(BatchPayload.assemble([]) == Array("[]".utf8))
        #expect(BatchPayload.cost(of: elements[0]) == 8)
    }
}
