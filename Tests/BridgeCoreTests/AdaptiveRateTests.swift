@testable import BridgeCore
import Testing

@Suite struct AdaptiveRateTests {
    @Test func notPacedUntilA429ThenCutBelowWhatWasAccepted() async throws {
        var settings = AdaptiveRate.Settings()
        settings.decreaseInterval = .seconds(60)
        let pacer = AdaptiveRate(settings: settings)
        #expect(pacer.rate == nil)
        try await pacer.acquire()
        for _ in 0..<100 { pacer.accepted() }
        #expect(pacer.rate == nil, "successes alone never start pacing")
        // 100 accepted within the last half second to second: 85% of 100-200 a second.
        #expect(pacer.throttledResponse() != nil, "the first 429 starts pacing")
        let rate = try #require(pacer.rate)
        #expect(rate >= 85 && rate <= 170, "\(rate)")
        // Requests answered 429 together count once.
        #expect(pacer.throttledResponse() == nil)
        #expect(pacer.rate == rate)
        #expect(pacer.throttled.load(ordering: .relaxed) == 2)
    }

    @Test func pacedSendsAreSpacedByTheRate() async throws {
        var settings = AdaptiveRate.Settings()
        settings.minimumRate = 50
        let pacer = AdaptiveRate(settings: settings)
        // No sends accepted yet: the first 429 paces at the minimum, 50 a second.
        pacer.throttledResponse()
        #expect(pacer.rate == 50)
        let start = ContinuousClock.now
        for _ in 0..<11 { try await pacer.acquire() }
        // Ten intervals of 20 ms at least (sleeps end late, never early).
        #expect(ContinuousClock.now - start >= .milliseconds(190))
    }
}
