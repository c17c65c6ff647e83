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
    /// From the message's source timestamp until the service accepted the send.
    let latency: CoreMetrics.Timer

    init(route: String, target: String) {
        let labels = [("route", route), ("target", target)]
        func sends(_ outcome: String) -> Counter { Counter(label: "wps_bridge_sends_total", dimensions: labels + [("outcome", outcome)]) }
        delivered = sends("delivered")
        deadLettered = sends("dead_lettered")
        dropped = sends("dropped")
        unsettled = sends("unsettled")
        retried = Counter(label: "wps_bridge_send_retries_total", dimensions: labels)
        inFlight = Meter(label: "wps_bridge_sends_in_flight", dimensions: labels)
        latency = CoreMetrics.Timer(label: "wps_bridge_delivery_latency_seconds", dimensions: labels)
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
        received = Counter(label: "wps_bridge_messages_received_total", dimensions: [("source", source)])
        unrouted = Counter(label: "wps_bridge_messages_unrouted_total", dimensions: [("source", source)])
        loopsPrevented = Counter(label: "wps_bridge_loops_prevented_total", dimensions: [("source", source)])
    }
}
