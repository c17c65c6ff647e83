import BridgeTestSupport
import Foundation
import Testing

/// The test helpers themselves: a leak here brings down the whole test process.
@Suite struct TestSupportTests {
    /// `runProcess` closes every pipe it opens. Session 12 saw the test process crash in
    /// `Process.run` (a `memcpy` past the end of its list of open descriptors, numbered past
    /// 1,300) during the lease tests, which run `redis-cli` every 10-15 ms.
    @Test func runProcessLeavesNoDescriptorOpen() async throws {
        func open() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0 }
        for _ in 0..<5 { _ = try await runProcess("/bin/echo", ["warm-up"]) }
        // Other tests run alongside in this process and open descriptors of their own (a thousand
        // WebSocket clients at once): a round of 50 runs counts when it gained fewer than 50.
        // The leak was 2 a run, 100 a round, in every round.
        var gains: [Int] = []
        for _ in 0..<5 {
            let before = open()
            for i in 0..<50 {
                let result = try await runProcess("/bin/cat", [], input: "line \(i)")
                #expect(result.stdout == "line \(i)")
            }
            gains.append(open() - before)
            if gains.last! < 50 { break }
        }
        #expect(gains.contains { $0 < 50 }, "descriptors gained by each round of 50 runs: \(gains)")
    }
}
