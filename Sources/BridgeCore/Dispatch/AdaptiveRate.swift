import BridgeObservability
import CoreMetrics
package import Synchronization

/// Paces sends to what the service accepts, once it has said "too many requests" (429).
///
/// Until a 429 comes after sends were accepted, nothing is paced (a 429 with nothing accepted
/// in the last second says nothing about the rate; its send waits for its `Retry-After`). Then
/// sends are spaced to a rate, AIMD-style: each 429 cuts the rate (to `decrease` of what was
/// accepted over the last second, or of the rate, at most once per `decreaseInterval`, so that
/// the requests answered together by one refusal count once), and while sends wait for the
/// pacer the rate grows by `increase` of itself per second.
/// The service's token bucket lets the rate probe above the limit briefly; the cut brings it back
/// below before many requests are refused. After `idleReset` without a 429, pacing stops.
///
/// The rate, not the number of requests in flight, is what is adapted: on a nearby service one
/// request takes well under a millisecond, so even a single connection can send faster than a
/// throttled unit accepts, and a concurrency limit alone could not keep below it.
package final class AdaptiveRate: Sendable {
    package struct Settings: Sendable, Equatable {
        /// Share of the accepted rate kept after a 429.
        package var decrease = 0.85
        /// Growth per second while sends wait for the pacer, as a share of the rate.
        package var increase = 0.05
        package var decreaseInterval: Duration = .milliseconds(250)
        package var idleReset: Duration = .seconds(60)
        /// Never paced below this many sends per second.
        package var minimumRate = 1.0
        /// Sends allowed at once after a quiet moment, in seconds of the rate.
        package var burst = 0.01

        package init() {}
    }

    private struct State {
        /// Sends per second; nil while not pacing.
        var rate: Double?
        /// The earliest time the next send may start.
        var nextSlot: ContinuousClock.Instant
        var lastDecrease: ContinuousClock.Instant
        var lastThrottle: ContinuousClock.Instant?
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

    package init(settings: Settings = Settings()) {
        self.settings = settings
        let now = ContinuousClock.now
        state = Mutex(State(nextSlot: now, lastDecrease: now - .seconds(3600), lastGrowth: now, bucketStart: now))
        gauge.record(0)
    }

    /// The paced rate in sends per second, nil while not pacing.
    package var rate: Double? { state.withLock { $0.rate } }

    /// Waits for this send's slot.
    /// - Throws: `CancellationError` when the task is cancelled while it waits.
    func acquire() async throws {
        let wait: Duration? = state.withLock { s in
            guard let rate = s.rate else { return nil }
            let now = ContinuousClock.now
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
        if let wait { try await Task.sleep(for: wait) }
    }

    /// A send was accepted.
    func accepted() {
        state.withLock { s in
            let now = ContinuousClock.now
            roll(&s, now)
            s.acceptedNow += 1
            guard let rate = s.rate else { return }
            let elapsed = (now - s.lastGrowth) / .seconds(1)
            guard elapsed >= 0.05 else { return }
            s.lastGrowth = now
            if s.bound {
                let grown = rate * (1 + settings.increase * elapsed)
                s.rate = grown
                gauge.record(grown)
            }
            s.bound = false
        }
    }

    /// The service answered 429. Returns the rate when this answer started the pacing.
    /// - Parameter cut: false for a batch that had room: the lane waits for the retry, so its
    ///   next batches carry more, and the rate is cut only once batches are full.
    @discardableResult
    func throttledResponse(cut: Bool = true) -> Double? {
        throttled.add(1, ordering: .relaxed)
        throttledCounter.increment()
        return state.withLock { s -> Double? in
            let now = ContinuousClock.now
            roll(&s, now)
            s.lastThrottle = now
            guard cut, now - s.lastDecrease >= settings.decreaseInterval else { return nil }
            let started = s.rate == nil
            // What the service took over the last quarter second to second and a half: its limit, or a bit over while its bucket drained.
            let window = max(0.25, ((now - s.bucketStart) + s.beforeLength) / .seconds(1))
            let acceptedRate = Double(s.acceptedNow + s.acceptedBefore) / window
            let base: Double
            if let rate = s.rate {
                base = acceptedRate > 0 ? min(rate, acceptedRate) : rate
            } else if acceptedRate > 0 {
                base = acceptedRate
                s.nextSlot = now
            } else {
                return nil
            }
            let next = max(settings.minimumRate, base * settings.decrease)
            s.lastDecrease = now
            s.rate = next
            s.lastGrowth = now
            s.bound = false
            gauge.record(next)
            return started ? next : nil
        }
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
