import CoreMetrics
package import Prometheus

/// The metrics `wps-bridge run` exports at `/metrics` (Prometheus text format), fed by
/// swift-metrics from every component.
package enum BridgeMetrics {
    package static let registry = PrometheusCollectorRegistry()

    /// Makes swift-metrics report into ``registry``; once per process, before anything makes a metric.
    package static func bootstrap() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30),
        ]
        MetricsSystem.bootstrap(factory)
    }
}
