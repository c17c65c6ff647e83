import BridgeObservability
import CoreMetrics
import Foundation
package import Synchronization

/// Paces sends to what the service accepts, once it has said "too many requests" (429).
///
/// Until a 429 comes after sends were accepted, nothing is paced (a 429 with nothing accepted
/// in the last second says nothing about the rate; its send waits for its `Retry-After`). Then
/// sends are spaced to a rate:
/// - Each 429 cuts it to `decrease` of what the service accepted over the last second (or of the
///   rate, if lower), at most once per `decreaseInterval`, so that the requests answered together
///   by one refusal count once. That accepted rate is the cut's *base*.
/// - While sends wait for the pacer, the rate grows back along a cubic of the time since the cut,
///   as in CUBIC and the AWS SDKs' adaptive retry mode: fast at first, flat near the base
///   (regained after `cbrt((1 - decrease) / probe)` seconds, 0.67 s by default), then faster and
///   faster above it. Unlike those, the curve is scaled by the base, not by an absolute constant,
///   so it behaves alike at 100 and at 20,000 sends a second. It never runs ahead of twice the
///   accepted rate.
/// - After `idleReset` without a 429, pacing stops.
///
/// Why a cubic and not the multiplicative 5% a second of session 10 (issue 21): several
/// replicas pace themselves against one unit, each on its own 429s. A replica cut early (its
/// first second's accepted rate was small because another took the budget) stays small under
/// multiplicative growth, and when the other is done it needs tens of seconds to take the freed
/// budget; two replicas reached 46-90% of the limit together. The cubic's probing above the base
/// takes the freed budget in a few seconds.
/// The service's token bucket lets the rate probe above the limit briefly; the cut brings it back
/// below before many requests are refused.
///
/// The rate, not the number of requests in flight, is what is adapted: on a nearby service one
/// request takes well under a millisecond, so even a single connection can send faster than a
/// throttled unit accepts, and a concurrency limit alone could not keep below it.
///
/// The methods that take `now` exist for the tests, which drive the pacer on a virtual clock.
package final class AdaptiveRate: Sendable {
    package struct Settings: Sendable, Equatable {
        /// Share of the accepted rate kept after a 429.
        package var decrease = 0.85
        /// The cubic's scale, per second cubed, as a share of the cut's base: after the base is
        /// regained, the rate is `base * (1 + probe * t^3)` `t` seconds later.
        package var probe = 0.5
        package var decreaseInterval: Duration = .milliseconds(250)
        package var idleReset: Duration = .seconds(60)
        /// Never paced below this many sends per second.
        package var minimumRate = 1.0
        /// Sends allowed at once after a quiet moment, in seconds of the rate.
        package var burst = 0.01
        /// How often the rate is moved along the curve.
        package var growthStep: Duration = .milliseconds(50)

        package init() {}

        /// Seconds after a cut at which the curve is back at the cut's base.
        var plateau: Double { cbrt((1 - decrease) / probe) }
    }

    private struct State {
        /// Sends per second; nil while not pacing.
        var rate: Double?
        /// The earliest time the next send may start.
        var nextSlot: ContinuousClock.Instant
        var lastDecrease: ContinuousClock.Instant
        var lastThrottle: ContinuousClock.Instant?
        /// What the last cut was based on (sends per second).
        var base = 0.0
        /// Whether a send waited since the last growth step (the rate is what binds).
        var bound = false
        var lastGrowth: ContinuousClock.Instant
        /// Accepted sends since `bucketStart`, and in the bucket before it (`beforeLength` long).
        var acceptedNow = 0
        var acceptedBefore = 0
        var beforeLength: Duration = .zero
        var bucketStart: ContinuousClock.Instant
    }

    private let state: Mutex<State>
    let settings: Settings
    private let gauge = Gauge(label: MetricName.sendRateLimit)
    private let throttledCounter = Counter(label: MetricName.sendsThrottled)
    /// 429 answers seen.
    package let throttled = Atomic<Int>(0)

    package init(settings: Settings = Settings(), now: ContinuousClock.Instant = .now) {
        self.settings = settings
        state = Mutex(State(nextSlot: now, lastDecrease: now - .seconds(3600), lastGrowth: now, bucketStart: now))
        gauge.record(0)
    }

    /// The paced rate in sends per second, nil while not pacing.
    package var rate: Double? { state.withLock { $0.rate } }

    /// Waits for this send's slot.
    /// - Throws: `CancellationError` when the task is cancelled while it waits.
    func acquire() async throws {
        if let wait = reserve(at: .now) { try await Task.sleep(for: wait) }
    }

    /// Takes the next slot: how long the send must wait for it, nil for not at all.
    package func reserve(at now: ContinuousClock.Instant) -> Duration? {
        state.withLock { s in
            guard let rate = s.rate else { return nil }
            if let last = s.lastThrottle, now - last > settings.idleReset {
                s.rate = nil
                s.lastThrottle = nil
                s.nextSlot = now
                gauge.record(0)
                return nil
            }
            let interval = Duration.seconds(1 / rate)
            let earliest = now - Duration.seconds(settings.burst)
            if s.nextSlot < earliest { s.nextSlot = earliest }
            let slot = s.nextSlot
            s.nextSlot = slot + interval
            guard slot > now else { return nil }
            s.bound = true
            return slot - now
        }
    }

    /// A send was accepted.
    package func accepted(at now: ContinuousClock.Instant = .now) {
        state.withLock { s in
            roll(&s, now)
            s.acceptedNow += 1
            guard let rate = s.rate, now - s.lastGrowth >= settings.growthStep else { return }
            s.lastGrowth = now
            defer { s.bound = false }
            guard s.bound else { return }
            let t = (now - s.lastDecrease) / .seconds(1) - settings.plateau
            let curve = s.base * (1 + settings.probe * t * t * t)
            let ceiling = 2 * acceptedRate(s, now)
            let grown = max(rate, min(curve, ceiling))
            guard grown != rate else { return }
            s.rate = grown
            gauge.record(grown)
        }
    }

    /// The service answered 429. Returns the rate when this answer started the pacing.
    /// - Parameter cut: false for a batch that had room: the lane waits for the retry, so its
    ///   next batches carry more, and the rate is cut only once batches are full.
    @discardableResult
    package func throttledResponse(cut: Bool = true, at now: ContinuousClock.Instant = .now) -> Double? {
        throttled.add(1, ordering: .relaxed)
        throttledCounter.increment()
        return state.withLock { s -> Double? in
            roll(&s, now)
            s.lastThrottle = now
            guard cut, now - s.lastDecrease >= settings.decreaseInterval else { return nil }
            let started = s.rate == nil
            let accepted = acceptedRate(s, now)
            let base: Double
            if let rate = s.rate {
                base = accepted > 0 ? min(rate, accepted) : rate
            } else if accepted > 0 {
                base = accepted
                s.nextSlot = now
            } else {
                return nil
            }
            let next = max(settings.minimumRate, base * settings.decrease)
            s.base = max(settings.minimumRate, base)
            s.lastDecrease = now
            s.rate = next
            s.lastGrowth = now
            s.bound = false
            gauge.record(next)
            return started ? next : nil
        }
    }

    /// What the service took over the last quarter second to second and a half: its limit, or a
    /// bit over while its bucket drained.
    private func acceptedRate(_ s: State, _ now: ContinuousClock.Instant) -> Double {
        let window = max(0.25, ((now - s.bucketStart) + s.beforeLength) / .seconds(1))
        return Double(s.acceptedNow + s.acceptedBefore) / window
    }

    private func roll(_ s: inout State, _ now: ContinuousClock.Instant) {
        let half = Duration.milliseconds(500)
        guard now - s.bucketStart >= half else { return }
        if now - s.bucketStart >= half * 2 {
            s.acceptedBefore = 0
            s.beforeLength = .zero
        } else {
            s.acceptedBefore = s.acceptedNow
            // A bucket without sends adds no length: after a quiet moment the burst's rate counts.
            s.beforeLength = s.acceptedNow > 0 ? now - s.bucketStart : .zero
        }
        s.acceptedNow = 0
        s.bucketStart = now
    }
}
