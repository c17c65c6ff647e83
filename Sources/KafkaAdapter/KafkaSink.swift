package import BridgeConfig
package import BridgeCore
import Logging
import NIOCore
import Synchronization

/// `type: kafka` as a sink (dead letters, mirrored events): an idempotent producer
/// (`enable.idempotence`, `acks=all`); a write returns once the broker acknowledged the record.
///
/// The record keeps its key (unless `key` is set) and payload; its headers become Kafka headers
/// (for dead letters: `wps-error`, `wps-route`, `wps-target`, `wps-source` ...). `topic` and `key`
/// are templates over the record: `{key}`, `{header.NAME}`, `{json.PATH}`.
package final class KafkaSink: SinkAdapter, HealthReporting {
    let topic: Template
    let key: Template?
    let properties: [(String, String)]
    let logger: Logger
    private let producer = Mutex<(client: KafkaProducer?, closed: Bool)>((nil, false))

    init(topic: Template, key: Template?, properties: [(String, String)], logger: Logger) {
        self.topic = topic
        self.key = key
        self.properties = properties
        self.logger = logger
    }

    package var description: String { "kafka topic '\(topic)'" }

    package var healthProblem: String? { producer.withLock { $0.client }?.context.currentProblem }

    /// The producer, created at the first write (so that `validate` opens nothing).
    func client() throws -> KafkaProducer {
        try producer.withLock { p in
            if p.closed { throw KafkaError("the sink is closed") }
            if let client = p.client { return client }
            let made = try KafkaProducer(properties: properties, logger: logger)
            p.client = made
            return made
        }
    }

    package func write(_ record: SinkRecord) async throws {
        let topicName = try topic.render(record)
        let keyText = try key.map { try $0.render(record) } ?? record.key
        let headers = record.headers.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } + [("wps-data-type", record.dataType.rawValue)]
        try await client().produce(
            topic: topicName, key: keyText.map { Array($0.utf8) }, value: Array(record.payload.readableBytesView), headers: headers)
    }

    package func close() async throws {
        let client = producer.withLock { p in
            defer { p = (nil, true) }
            return p.client
        }
        await client?.close()
    }
}

/// `type: kafka` sinks: `{type: kafka, brokers, topic, key?, deliveryTimeout?, librdkafka?}`.
package struct KafkaSinkFactory: SinkFactory {
    package init() {}
    package var typeName: String { "kafka" }
    package var summary: String { "a Kafka topic, idempotent producer, written once acknowledged (brokers, topic, key)" }

    static let reserved: Set<String> = ["bootstrap.servers", "metadata.broker.list", "enable.idempotence"]

    package func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)? {
        settings.checkKeys(["brokers", "topic", "key", "deliveryTimeout", "librdkafka"], what: "a kafka sink")
        let brokers = readBrokers(settings)
        let topic = settings.sinkTemplate("topic", required: true)
        let key = settings.sinkTemplate("key")
        let timeout = settings.duration("deliveryTimeout") ?? .seconds(30)
        let extra = readLibrdkafka(settings, reserved: Self.reserved)
        guard let brokers, let topic, let extra else { return nil }
        let timeoutMs = max(1, Int(timeout / .milliseconds(1)))
        var properties: [(String, String)] = [
            ("bootstrap.servers", brokers), ("enable.idempotence", "true"), ("acks", "all"),
            ("message.timeout.ms", String(timeoutMs)), ("client.id", "wps-bridge"),
        ]
        properties = merge(properties, extra)
        if let value = settings.value("librdkafka") {
            for (key, problem) in KafkaConfiguration.check(properties) { value.report("\(key): \(problem)") }
        }
        return KafkaSink(topic: topic, key: key, properties: properties, logger: context.logger)
    }
}
