package import BridgeConfig
package import Logging
package import NIOCore

/// Hands deliveries to the dispatcher. `emit` suspends while the dispatcher is full: that is the
/// back-pressure a source feels.
package struct DeliveryEmitter: Sendable {
    let body: @Sendable (Delivery) async throws -> Void

    package init(_ body: @escaping @Sendable (Delivery) async throws -> Void) {
        self.body = body
    }

    /// - Throws: `CancellationError` when the bridge is shutting down.
    package func emit(_ delivery: Delivery) async throws {
        try await body(delivery)
    }
}

/// A source of messages: Kafka, Redis, stdin.
///
/// `run` reads until the input ends (then returns) or its task is cancelled (then stops reading
/// and returns promptly: the bridge is shutting down). Every delivery it emits is settled by the
/// dispatcher; after all of them were, `finish` is called once to commit positions and close.
package protocol SourceAdapter: Sendable {
    var name: String { get }
    func run(emit: DeliveryEmitter) async throws
    func finish() async throws
}

extension SourceAdapter {
    package func finish() async throws {}
}

/// An adapter that can tell why it is not working right now (a broker down, an unknown topic,
/// an authentication failure), for readiness checks and logs. nil means healthy.
package protocol HealthReporting: Sendable {
    var healthProblem: String? { get }
}

/// A source that hears the groups of a hub as a Web PubSub client (`type: webpubsub`): `events:`
/// rules can mirror what it hears, and its own connection events are not mirrored.
package protocol GroupListening: SourceAdapter {
    var listenedHub: String { get }
    var listenedGroups: [String] { get }
    /// The user id it connects as.
    var listenerUserId: String { get }
}

/// A record for a sink: a dead letter or a mirrored event.
package struct SinkRecord: Sendable {
    package var payload: ByteBuffer
    package var dataType: DataType
    package var key: String?
    package var headers: [String: String]

    package init(payload: ByteBuffer, dataType: DataType, key: String? = nil, headers: [String: String] = [:]) {
        self.payload = payload
        self.dataType = dataType
        self.key = key
        self.headers = headers
    }
}

/// Where records are written: dead letters now, mirrored events later. A write returns once the
/// record is durable as far as the sink can tell (flushed, acknowledged by the broker).
package protocol SinkAdapter: Sendable {
    /// `file /var/lib/x.ndjson`, `stdout`: for logs.
    var description: String { get }
    func write(_ record: SinkRecord) async throws
    func close() async throws
}

extension SinkAdapter {
    package func close() async throws {}
}

/// `deadLetter: {type: drop}`: a message that cannot be delivered is dropped on purpose (logged
/// and counted as dropped). The only way to route an at-least-once source without a dead-letter
/// sink.
package struct DropSink: SinkAdapter {
    package init() {}
    package var description: String { "drop" }
    package func write(_ record: SinkRecord) async throws {}
}

package struct DropSinkFactory: SinkFactory {
    package init() {}
    package var typeName: String { "drop" }
    package var summary: String { "drops what it is given, on purpose (deadLetter: {type: drop})" }
    package func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)? {
        settings.checkKeys([], what: "a drop sink")
        return DropSink()
    }
}

/// What factories get besides their settings.
package struct AdapterContext: Sendable {
    package var logger: Logger
    package var environment: [String: String]

    package init(logger: Logger, environment: [String: String]) {
        self.logger = logger
        self.environment = environment
    }
}

/// Builds sources of one `type`. Reading the settings is validating them: problems go to the
/// mapping's reader with their YAML path and line, and nothing is opened until `run`.
package protocol SourceFactory: Sendable {
    /// The `type` in `bridge.yaml`.
    var typeName: String { get }
    /// One line for `validate`'s summary and the docs.
    var summary: String { get }
    /// Origin fields its messages carry (`topic`, `partition`, `channel`, `stream`, `pattern`),
    /// so that a template reading another one is a config error.
    var originFields: Set<String> { get }
    /// Reads type-specific settings (every key except `name` and `type`).
    func makeSource(name: String, settings: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)?
    /// At least once: a message is acknowledged (committed, XACKed) only once it was delivered or
    /// dead-lettered, and read again otherwise (Kafka, Redis Streams, the group listener). A
    /// route from such a source needs a dead-letter sink, or `deadLetter: {type: drop}`.
    var isAtLeastOnce: Bool { get }
    /// How several replicas running this source share its input.
    var replicaMode: ReplicaMode { get }
}

extension SourceFactory {
    package var isAtLeastOnce: Bool { false }
    package var replicaMode: ReplicaMode { .everyReplica }
}

/// Builds sinks of one `type` (dead letters; mirrored events).
package protocol SinkFactory: Sendable {
    var typeName: String { get }
    var summary: String { get }
    /// Reads type-specific settings (every key except `type`).
    func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)?
}

/// Source and sink types by name: the seam that adapters plug into.
package struct AdapterRegistry: Sendable {
    package private(set) var sources: [String: any SourceFactory] = [:]
    package private(set) var sinks: [String: any SinkFactory] = [:]

    package init() {}

    package mutating func register(source factory: any SourceFactory) {
        sources[factory.typeName] = factory
    }

    package mutating func register(sink factory: any SinkFactory) {
        sinks[factory.typeName] = factory
    }
}
