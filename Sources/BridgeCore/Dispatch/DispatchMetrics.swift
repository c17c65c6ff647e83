import BridgeObservability
import CoreMetrics
import Foundation

/// The metrics of one target of one route, through swift-metrics (exported by the backend the
/// process bootstrapped: Prometheus at `/metrics` for `wps-bridge run`; nothing in tests).
struct TargetMetrics: Sendable {
    let delivered: Counter
    let deadLettered: Counter
    let dropped: Counter
    let unsettled: Counter
    let retried: Counter
    let inFlight: Meter
    let conflated: Counter
    let batchMessages: Recorder
    let batchBytes: Recorder
    /// From the message's source timestamp until the service accepted the send.
    let latency: CoreMetrics.Timer

    init(route: String, target: String) {
        let labels = [("route", route), ("target", target)]
        func sends(_ outcome: String) -> Counter { Counter(label: MetricName.sends, dimensions: labels + [("outcome", outcome)]) }
        delivered = sends("delivered")
        deadLettered = sends("dead_lettered")
        dropped = sends("dropped")
        unsettled = sends("unsettled")
        retried = Counter(label: MetricName.sendRetries, dimensions: labels)
        inFlight = Meter(label: MetricName.sendsInFlight, dimensions: labels)
        conflated = Counter(label: MetricName.messagesConflated, dimensions: labels)
        batchMessages = Recorder(label: MetricName.batchMessages, dimensions: labels)
        batchBytes = Recorder(label: MetricName.batchBytes, dimensions: labels)
        latency = CoreMetrics.Timer(label: MetricName.deliveryLatency, dimensions: labels)
    }

    func recordLatency(since timestamp: Date) {
        latency.recordNanoseconds(Int64(max(0, Date().timeIntervalSince(timestamp)) * 1e9))
    }
}

/// Per-source counters of the dispatcher.
struct SourceMetrics: Sendable {
    let received: Counter
    let unrouted: Counter
    let loopsPrevented: Counter

    init(source: String) {
        received = Counter(label: MetricName.messagesReceived, dimensions: [("source", source)])
        unrouted = Counter(label: MetricName.messagesUnrouted, dimensions: [("source", source)])
        loopsPrevented = Counter(label: MetricName.loopsPrevented, dimensions: [("source", source)])
    }
}
