package import BridgeConfig
package import BridgeCore
import BridgeObservability
import Foundation
import Logging
import NIOCore
import Synchronization

/// `type: kafka`: reads topics in a consumer group, at least once.
///
/// Every record becomes a message with the record's key, headers and timestamp, and its topic,
/// partition and offset as origin (templates read `{topic}`, `{partition}`, `{offset}`).
/// Offsets are committed only up to the highest contiguous settled offset per partition, so a
/// crash repeats messages but never skips one.
package final class KafkaSource: SourceAdapter, HealthReporting {
    package let name: String
    let settings: KafkaConsumer.Settings
    let dataType: PayloadType
    let logger: Logger
    private let consumer = Mutex<KafkaConsumer?>(nil)

    init(name: String, settings: KafkaConsumer.Settings, dataType: PayloadType, logger: Logger) {
        self.name = name
        self.settings = settings
        self.dataType = dataType
        self.logger = logger
    }

    /// Why the consumer is not healthy right now (brokers down, unknown topic, fatal error), or nil.
    package var healthProblem: String? { consumer.withLock { $0 }?.context.currentProblem }

    package func run(emit: DeliveryEmitter) async throws {
        let consumer = try KafkaConsumer(settings: settings, logger: logger)
        do {
            try consumer.start()
        } catch {
            consumer.destroyUnstarted()
            throw error
        }
        // Only a started consumer is closed by `finish` (which waits for its poll thread).
        self.consumer.withLock { $0 = consumer }
        logger.info(
            "kafka source started",
            metadata: [LogKey.source: "\(name)", LogKey.topics: "\(settings.topics)", LogKey.librdkafka: "\(librdkafkaVersion)"])
        while let record = await consumer.next() {
            let (message, rejection) = makeMessage(record)
            let delivery = Delivery(message: message, rejection: rejection) { outcome in consumer.settle(record, outcome) }
            do {
                try await emit.emit(delivery)
            } catch {
                // Not taken by the dispatcher (shutting down): it stays uncommitted and is read again.
                consumer.settle(record, .failed("not dispatched: shutting down"))
                break
            }
        }
        consumer.drain()
    }

    package func finish() async throws {
        guard let consumer = consumer.withLock({ $0 }) else { return }
        await consumer.close()
        logger.debug("kafka source closed", metadata: [LogKey.source: "\(name)"])
    }

    func makeMessage(_ record: KafkaRecord) -> (Message, String?) {
        var headers: [String: String] = [:]
        for (name, value) in record.headers { headers[name] = String(decoding: value, as: UTF8.self) }
        let origin = Origin(
            source: name, topic: record.partition.topic, partition: Int(record.partition.partition), position: String(record.offset))
        let timestamp = record.timestamp.map { Date(timeIntervalSince1970: Double($0) / 1000) } ?? Date()
        let (type, rejection) = dataType.classify(record.payload)
        let message = Message(
            payload: ByteBuffer(bytes: record.payload), dataType: type, key: record.key.map { String(decoding: $0, as: UTF8.self) },
            headers: headers, origin: origin, timestamp: timestamp)
        return (message, rejection)
    }
}

/// `type: kafka` sources.
package struct KafkaSourceFactory: SourceFactory {
    package var replicaMode: ReplicaMode { .consumerGroup }
    package init() {}
    package var isAtLeastOnce: Bool { true }
    package var typeName: String { "kafka" }
    package var summary: String { "Kafka topics in a consumer group, at least once (brokers, topics, group)" }
    package var originFields: Set<String> { ["topic", "partition"] }

    /// Properties the bridge sets itself.
    static let reserved: Set<String> = [
        "bootstrap.servers", "metadata.broker.list", "group.id", "enable.auto.commit", "enable.auto.offset.store",
    ]

    package func makeSource(name: String, settings: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        settings.checkKeys(
            ["brokers", "topics", "group", "startFrom", "dataType", "commitInterval", "revokeTimeout", "librdkafka"], what: "a kafka source")
        let brokers = readBrokers(settings)
        let topics = settings.stringList("topics")
        if settings.value("topics") == nil { settings.report("missing required key 'topics': topic names, or regexes starting with ^") }
        if let topics, topics.isEmpty || topics.contains(where: \.isEmpty) {
            settings.value("topics")?.report("topic names must not be empty")
        } else if let topics, Set(topics).count != topics.count {
            settings.value("topics")?.report("a topic is listed twice")
        }
        let group = settings.nonEmptyString("group", required: true)
        let startFrom = settings.enumeration("startFrom", StartFrom.self) ?? .latest
        let dataType = settings.enumeration("dataType", PayloadType.self) ?? .auto
        let commitInterval = settings.duration("commitInterval") ?? .seconds(1)
        let revokeTimeout = settings.duration("revokeTimeout") ?? .seconds(10)
        let extra = readLibrdkafka(settings, reserved: Self.reserved)
        guard let brokers, let topics, !topics.isEmpty, let group, let extra else { return nil }
        var properties: [(String, String)] = [
            ("bootstrap.servers", brokers), ("group.id", group), ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"), ("auto.offset.reset", startFrom.rawValue),
            ("client.id", "wps-bridge"),
            // What librdkafka fetches ahead: its defaults (64 MB, 100,000 messages) would be most of the process's memory.
            ("queued.max.messages.kbytes", "8192"), ("queued.min.messages", "10000"),
            // The size of one fetch response (defaults 50 MB, 1 MB a partition): each is a buffer of
            // its own while it is parsed, 5 MB spikes in the benchmark's drain, at no gain in
            // throughput. A larger record still comes whole (Kafka returns the first batch anyway).
            ("fetch.max.bytes", "2097152"), ("max.partition.fetch.bytes", "524288"),
            // With the fetch-ahead above its thresholds (above: small, and soon reached at full
            // speed) librdkafka postpones a partition's next fetch by this much (default 1 s): a
            // second without records for that partition whenever the dispatcher caught up. 200,000
            // records on Tansu, a consumer pausing as the bridge does: 6,700 msg/s with 1 s,
            // 68,000 with 10 ms.
            ("fetch.queue.backoff.ms", "10"),
            // Kafka's default before 3.0 (now 45 s): a bridge that died gives up its partitions sooner.
            ("session.timeout.ms", "10000"),
            // Incremental rebalancing: when a replica joins or dies, only the partitions that move
            // stop, not every member's (librdkafka's default, range,roundrobin, is eager). The
            // replica tests (3 replicas, 12 partitions, docs/kafka.md#replicas): replicas joining
            // mid-stream pause deliveries 0-2.4 s against 2.9-3.0 s eager; after a SIGKILL the
            // longest pause is 2.9-6.1 s against 2.4-9.8 s; duplicates alike (6 and 9 runs).
            ("partition.assignment.strategy", "cooperative-sticky"),
        ]
        properties = merge(properties, extra)
        if let value = settings.value("librdkafka") {
            for (key, problem) in KafkaConfiguration.check(properties) { value.report("\(key): \(problem)") }
        }
        var consumer = KafkaConsumer.Settings(properties: properties, topics: topics)
        consumer.commitInterval = commitInterval
        consumer.revokeDrainTimeout = revokeTimeout
        consumer.source = name
        return KafkaSource(name: name, settings: consumer, dataType: dataType, logger: context.logger)
    }

    enum StartFrom: String, CaseIterable {
        case earliest, latest
    }
}

/// `brokers`: `host:port`, a comma-separated list or a YAML list.
func readBrokers(_ settings: ConfigMapping) -> String? {
    guard settings.value("brokers") != nil else {
        settings.report("missing required key 'brokers' (host:port, or a list of them)")
        return nil
    }
    guard let list = settings.stringList("brokers") else { return nil }
    let brokers = list.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
    if brokers.isEmpty || brokers.contains(where: { $0.isEmpty }) {
        settings.value("brokers")?.report("brokers must be host:port entries")
        return nil
    }
    return brokers.joined(separator: ",")
}

/// `librdkafka:`: librdkafka properties passed through (security.protocol, sasl.*, ssl.*, ...).
/// A value may come from a file: `sasl.passwordFile: /run/secrets/kafka` sets `sasl.password`.
func readLibrdkafka(_ settings: ConfigMapping, reserved: Set<String>) -> [(String, String)]? {
    guard settings.has("librdkafka") else { return [] }
    guard let map = settings.mapping("librdkafka") else { return nil }
    var result: [(String, String)] = []
    var ok = true
    for key in map.keys {
        let fromFile = key.hasSuffix("File")
        let property = fromFile ? String(key.dropLast("File".count)) : key
        // `x` next to `xFile` is reported once, by `secret`, when `xFile` comes up.
        if !fromFile && map.has(key + "File") { continue }
        if reserved.contains(property) {
            map.value(key)?.report("'\(property)' is set by the bridge from the source's own keys (brokers, group)")
            ok = false
            continue
        }
        guard let value = fromFile ? map.secret(property) : map.string(key) else {
            ok = false
            continue
        }
        result.append((property, value))
    }
    return ok ? result : nil
}

/// Later entries win.
func merge(_ base: [(String, String)], _ overrides: [(String, String)]) -> [(String, String)] {
    var result = base.filter { entry in !overrides.contains { $0.0 == entry.0 } }
    result.append(contentsOf: overrides)
    return result
}
