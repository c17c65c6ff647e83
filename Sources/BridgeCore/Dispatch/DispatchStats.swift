package import Synchronization

/// Counters of what the dispatcher did, for logs, the progress line and tests.
package final class DispatchStats: Sendable {
    /// Messages read from sources.
    package let received = Atomic<Int>(0)
    /// Sends that reached Web PubSub (one per message and target).
    package let delivered = Atomic<Int>(0)
    /// REST requests Web PubSub accepted: one per delivered message, or one per batch.
    package let sends = Atomic<Int>(0)
    /// Messages a newer one of the same `conflate.key` replaced in its batch (settled with it).
    package let conflated = Atomic<Int>(0)
    /// Sends Web PubSub answered 429 (too many requests).
    package let throttled = Atomic<Int>(0)
    /// Retries after a retryable failure.
    package let retried = Atomic<Int>(0)
    /// Sends given up and written to a dead-letter sink.
    package let deadLettered = Atomic<Int>(0)
    /// Sends given up with no dead-letter sink configured: logged, then dropped.
    package let dropped = Atomic<Int>(0)
    /// Deliveries left unacknowledged (shutdown timeout, dead-letter write failed).
    package let unsettled = Atomic<Int>(0)
    /// Messages that matched no route.
    package let unrouted = Atomic<Int>(0)
    /// Sends skipped because the message was mirrored from the target's own hub.
    package let loopsPrevented = Atomic<Int>(0)

    package init() {}

    package var summary: String {
        "received \(received.load(ordering: .relaxed)), delivered \(delivered.load(ordering: .relaxed)), "
            + "sends \(sends.load(ordering: .relaxed)), conflated \(conflated.load(ordering: .relaxed)), "
            + "429s \(throttled.load(ordering: .relaxed)), "
            + "retried \(retried.load(ordering: .relaxed)), dead-lettered \(deadLettered.load(ordering: .relaxed)), "
            + "dropped \(dropped.load(ordering: .relaxed)), unacknowledged \(unsettled.load(ordering: .relaxed)), "
            + "unrouted \(unrouted.load(ordering: .relaxed)), loops prevented \(loopsPrevented.load(ordering: .relaxed))"
    }
}

/// Settles a delivery once all of its sends are done.
final class DeliveryTracker: Sendable {
    let delivery: Delivery
    private let state: Mutex<(remaining: Int, failure: String?)>

    init(_ delivery: Delivery, sends: Int) {
        self.delivery = delivery
        state = Mutex((sends, nil))
    }

    /// Records one send's outcome; returns the delivery's outcome once every send is done.
    func settle(_ outcome: DeliveryOutcome) -> DeliveryOutcome? {
        let final: DeliveryOutcome? = state.withLock { s in
            if case .failed(let reason) = outcome, s.failure == nil { s.failure = reason }
            s.remaining -= 1
            guard s.remaining == 0 else { return nil }
            return s.failure.map { .failed($0) } ?? .done
        }
        if let final { delivery.complete(final) }
        return final
    }
}
