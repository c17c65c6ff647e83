import Synchronization
import Testing

@testable import BridgeCore

@Suite struct AdaptiveRateTests {
    @Test func notPacedUntilA429ThenCutBelowWhatWasAccepted() async throws {
        var settings = AdaptiveRate.Settings()
        settings.decreaseInterval = .seconds(60)
        let pacer = AdaptiveRate(settings: settings)
        #expect(pacer.rate == nil)
        try await pacer.acquire()
        for _ in 0..<100 { pacer.accepted() }
        #expect(pacer.rate == nil, "successes alone never start pacing")
        // 100 accepted within the last quarter second to second and a half: 85% of 67-400 a second.
        #expect(pacer.throttledResponse() != nil, "the first 429 starts pacing")
        let rate = try #require(pacer.rate)
        #expect(rate >= 56 && rate <= 340, "\(rate)")
        // Requests answered 429 together count once.
        #expect(pacer.throttledResponse() == nil)
        #expect(pacer.rate == rate)
        #expect(pacer.throttled.load(ordering: .relaxed) == 2)
    }

    /// A 429 to a batch that had room: the lane waits for the retry and its next batches carry
    /// more, so the rate is not cut; once a full batch is refused, it is.
    @Test func a429ToABatchWithRoomDoesNotCutTheRate() {
        let pacer = AdaptiveRate()
        for _ in 0..<100 { pacer.accepted() }
        #expect(pacer.throttledResponse(cut: false) == nil)
        #expect(pacer.rate == nil, "not paced: batches grow first")
        #expect(pacer.throttled.load(ordering: .relaxed) == 1, "counted all the same")
        #expect(pacer.throttledResponse(cut: true) != nil)
        #expect(pacer.rate != nil)
    }

    @Test func aFirst429WithNothingAcceptedDoesNotPace() {
        let pacer = AdaptiveRate()
        #expect(pacer.throttledResponse() == nil)
        #expect(pacer.rate == nil)
    }

    @Test func pacedSendsAreSpacedByTheRate() async throws {
        let pacer = AdaptiveRate()
        for _ in 0..<30 { pacer.accepted() }
        // 30 accepted within the last quarter second to second and a half: paced at 85% of 20-120 a second.
        pacer.throttledResponse()
        let rate = try #require(pacer.rate)
        #expect(rate >= 17 && rate <= 102, "\(rate)")
        let start = ContinuousClock.now
        for _ in 0..<11 { try await pacer.acquire() }
        // Ten intervals of 1/rate at least, less the burst allowance (sleeps end late, never early).
        #expect(ContinuousClock.now - start >= .seconds(10 / rate) - .milliseconds(15))
    }
}
