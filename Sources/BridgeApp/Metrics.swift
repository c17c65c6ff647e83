import BridgeObservability
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
        factory.valueHistogramBuckets = [
            MetricName.batchMessages: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000],
            MetricName.batchBytes: [1024, 4096, 16384, 65536, 262_144, 524_288, 1_048_576],
        ]
        MetricsSystem.bootstrap(factory)
    }
}
