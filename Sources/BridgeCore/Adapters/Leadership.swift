import BridgeObservability
import Metrics

/// How a source's input is split when several replicas of the bridge run one config.
package enum ReplicaMode: Sendable {
    /// The engine splits it: Kafka and Redis Streams consumer groups.
    case consumerGroup
    /// Every replica hears all of it (Redis pub/sub, the group listener): with `replicas: many`
    /// only the leader (``Leadership``) forwards it.
    case everyReplica
    /// Each process has its own (stdin).
    case processLocal
}

/// `replicas:` of a source: `one` (the default: this process is the only one) or `many` (several
/// replicas run this config).
package enum Replicas: String, Sendable {
    case one, many
}

/// Which replica forwards the sources that every replica hears in full: the one holding a lease
/// in a system the deployment already has (Redis, Kafka). Checked for every message, so cheap.
package protocol Leadership: Sendable {
    /// True while this replica holds the lease.
    var isLeader: Bool { get }
    /// What the lease is and who this replica is in it, for `/readyz` and `validate`.
    var description: String { get }
    /// Campaigns for the lease and renews it until cancelled or a graceful shutdown; then stops
    /// leading first and releases the lease, so that the next leader starts with no overlap.
    func run() async throws
}

/// A source of `replicas: many` that every replica hears: it runs on every replica (a standby
/// is subscribed already when it takes over), and only the leader's messages go on; a follower
/// settles what it hears as done and counts it.
package struct LeaderOnlySource: SourceAdapter, HealthReporting {
    package let inner: any SourceAdapter
    package let leadership: any Leadership

    package init(inner: any SourceAdapter, leadership: any Leadership) {
        self.inner = inner
        self.leadership = leadership
    }

    package var name: String { inner.name }

    package var healthProblem: String? { (inner as? any HealthReporting)?.healthProblem }

    package func run(emit: DeliveryEmitter) async throws {
        let skipped = Counter(label: MetricName.messagesNotLeader, dimensions: [("source", inner.name)])
        let leadership = leadership
        try await inner.run(
            emit: DeliveryEmitter { delivery in
                if leadership.isLeader {
                    try await emit.emit(delivery)
                } else {
                    skipped.increment()
                    delivery.ack()
                }
            })
    }

    package func finish() async throws { try await inner.finish() }
}
