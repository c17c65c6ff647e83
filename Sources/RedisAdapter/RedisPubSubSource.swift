package import BridgeConfig
package import BridgeCore
import BridgeObservability
import CoreMetrics
import Foundation
import Logging
import NIOCore
import Synchronization

/// `type: redis`: messages published on channels and patterns.
///
/// Pub/sub is at-most-once by nature: what is published while the bridge is disconnected (or
/// before it subscribed) is gone. The source reconnects with backoff, resubscribes, and logs and
/// counts each gap; for at-least-once, use Streams (`type: redis-stream`).
package final class RedisPubSubSource: SourceAdapter, HealthReporting {
    package let name: String
    let url: RedisEndpoint
    let channels: [String]
    let patterns: [String]
    let dataType: PayloadType
    let logger: Logger
    let counters = Counters()

    final class Counters: Sendable {
        let received = Atomic<Int>(0)
        /// Times the subscription was lost and made again.
        let gaps = Atomic<Int>(0)
        let lost = Atomic<Int>(0)
    }

    init(name: String, url: RedisEndpoint, channels: [String], patterns: [String], dataType: PayloadType, logger: Logger) {
        self.name = name
        self.url = url
        self.channels = channels
        self.patterns = patterns
        self.dataType = dataType
        self.logger = logger
        health = ConnectionHealth(logger: logger)
    }

    package var gaps: Int { counters.gaps.load(ordering: .relaxed) }

    private let health: ConnectionHealth
    package var healthProblem: String? { health.problem }

    package func run(emit: DeliveryEmitter) async throws {
        let thread = RedisThread()
        defer { thread.shutdown() }
        let loop = ReconnectLoop(
            source: name, health: health, backoff: Backoff(initial: .milliseconds(100), maximum: .seconds(5)),
            message: "redis pub/sub connection failed; reconnecting")
        try await loop.run { attempt in
            let (url, channels, patterns) = (url, channels, patterns)
            let connection = try await thread.run {
                let c = try RedisBlockingConnection(url)
                if !channels.isEmpty { try c.append([Array("SUBSCRIBE".utf8)] + channels.map { Array($0.utf8) }) }
                if !patterns.isEmpty { try c.append([Array("PSUBSCRIBE".utf8)] + patterns.map { Array($0.utf8) }) }
                return c
            }
            attempt.connected()
            if attempt.isReconnect, let since = attempt.disconnectedAt {
                counters.gaps.add(1, ordering: .relaxed)
                Counter(label: MetricName.sourceGaps, dimensions: [("source", name)]).increment()
                logger.warning(
                    "redis pub/sub resubscribed; messages published while disconnected are lost (pub/sub is at-most-once)",
                    metadata: [LogKey.source: "\(name)", LogKey.disconnectedFor: "\(ContinuousClock.now - since)", LogKey.gaps: "\(gaps)"])
            } else {
                logger.info(
                    "redis pub/sub subscribed",
                    metadata: [LogKey.source: "\(name)", LogKey.url: "\(url)", LogKey.channels: "\(channels)", LogKey.patterns: "\(patterns)"])
            }
            try await receive(connection, thread: thread, emit: emit)
        } classify: { error in
            guard let error = error as? RedisError else { return nil }
            // Wrong credentials or settings are not cured by retrying at once.
            let slow = error.kind == .authentication || error.kind == .config || error.kind == .tls
            return .init(problem: error.message, waitAtLeast: slow ? .seconds(5) : nil)
        }
        logger.debug(
            "redis pub/sub finished", metadata: [LogKey.source: "\(name)", LogKey.received: "\(counters.received.load(ordering: .relaxed))"])
    }

    /// Reads subscription replies and messages until the connection breaks or the task is cancelled.
    private func receive(_ connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter) async throws {
        while true {
            let value = try await withTaskCancellationHandler {
                try await thread.run { [idle = url.commandTimeout] in try connection.readSubscribed(idle: idle) }
            } onCancel: {
                connection.interrupt()
            }
            try Task.checkCancellation()
            guard let parts = value.array, let kind = parts.first?.text else { continue }
            let channel: String
            var pattern: String?
            let payload: [UInt8]
            switch kind {
            case "message" where parts.count == 3:
                channel = parts[1].text ?? ""
                payload = parts[2].bytes ?? []
            case "pmessage" where parts.count == 4:
                pattern = parts[1].text
                channel = parts[2].text ?? ""
                payload = parts[3].bytes ?? []
            default:
                continue  // subscribe / psubscribe confirmations
            }
            counters.received.add(1, ordering: .relaxed)
            let (type, rejection) = dataType.classify(payload)
            let message = Message(
                payload: ByteBuffer(bytes: payload), dataType: type, origin: Origin(source: name, channel: channel, pattern: pattern))
            let delivery = Delivery(message: message, rejection: rejection) { [logger, counters, name] outcome in
                if case .failed(let reason) = outcome {
                    counters.lost.add(1, ordering: .relaxed)
                    logger.warning(
                        "redis pub/sub message not delivered",
                        metadata: [LogKey.source: "\(name)", LogKey.channel: "\(channel)", LogKey.reason: "\(reason)"])
                }
            }
            try await emit.emit(delivery)
        }
    }
}

/// `type: redis` sources.
package struct RedisPubSubSourceFactory: SourceFactory {
    package init() {}
    package var typeName: String { "redis" }
    package var summary: String { "Redis pub/sub channels and patterns, at most once (url, channels, patterns)" }
    package var originFields: Set<String> { ["channel", "pattern"] }

    package func makeSource(name: String, settings: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        settings.checkKeys(redisEndpointKeys + ["channels", "patterns", "dataType"], what: "a redis source")
        let url = readRedisEndpoint(settings)
        let channels = settings.stringList("channels") ?? []
        let patterns = settings.stringList("patterns") ?? []
        if channels.isEmpty && patterns.isEmpty {
            settings.report("a redis source needs 'channels' or 'patterns' (or both)")
        }
        if channels.contains(where: \.isEmpty) || patterns.contains(where: \.isEmpty) {
            settings.report("channel names and patterns must not be empty")
        }
        let dataType = settings.enumeration("dataType", PayloadType.self) ?? .auto
        guard let url, !(channels.isEmpty && patterns.isEmpty) else { return nil }
        return RedisPubSubSource(name: name, url: url, channels: channels, patterns: patterns, dataType: dataType, logger: context.logger)
    }
}
