public import BridgeCore
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
public final class RedisPubSubSource: SourceAdapter, HealthReporting {
    public let name: String
    let url: RedisURL
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

    init(name: String, url: RedisURL, channels: [String], patterns: [String], dataType: PayloadType, logger: Logger) {
        self.name = name
        self.url = url
        self.channels = channels
        self.patterns = patterns
        self.dataType = dataType
        self.logger = logger
    }

    public var gaps: Int { counters.gaps.load(ordering: .relaxed) }

    private let problem = Mutex<String?>(nil)
    public var healthProblem: String? { problem.withLock { $0 } }

    public func run(emit: DeliveryEmitter) async throws {
        let thread = RedisThread()
        defer { thread.shutdown() }
        var backoff = Duration.milliseconds(100)
        var disconnectedAt: ContinuousClock.Instant?
        var everSubscribed = false
        var lastLogged: ContinuousClock.Instant?
        while !Task.isCancelled {
            do {
                let (url, channels, patterns) = (url, channels, patterns)
                let connection = try await thread.run {
                    let c = try RedisBlockingConnection(url)
                    if !channels.isEmpty { try c.append([Array("SUBSCRIBE".utf8)] + channels.map { Array($0.utf8) }) }
                    if !patterns.isEmpty { try c.append([Array("PSUBSCRIBE".utf8)] + patterns.map { Array($0.utf8) }) }
                    return c
                }
                if everSubscribed, let since = disconnectedAt {
                    counters.gaps.add(1, ordering: .relaxed)
                    Counter(label: "wps_bridge_source_reconnects_total", dimensions: [("source", name)]).increment()
                    Counter(label: "wps_bridge_source_gaps_total", dimensions: [("source", name)]).increment()
                    logger.warning(
                        "redis pub/sub resubscribed; messages published while disconnected are lost (pub/sub is at-most-once)",
                        metadata: ["wps.source": "\(name)", "wps.disconnected_for": "\(ContinuousClock.now - since)", "wps.gaps": "\(gaps)"])
                } else {
                    logger.info("redis pub/sub subscribed", metadata: ["wps.source": "\(name)", "wps.url": "\(url)", "wps.channels": "\(channels)", "wps.patterns": "\(patterns)"])
                }
                disconnectedAt = nil
                problem.withLock { $0 = nil }
                everSubscribed = true
                lastLogged = nil
                backoff = .milliseconds(100)
                try await receive(connection, thread: thread, emit: emit)
            } catch is CancellationError {
                break
            } catch let error as RedisError {
                if Task.isCancelled { break }
                if disconnectedAt == nil { disconnectedAt = .now }
                problem.withLock { $0 = error.message }
                if lastLogged.map({ ContinuousClock.now - $0 >= .seconds(30) }) ?? true {
                    lastLogged = .now
                    logger.error("redis pub/sub: \(error.message); reconnecting", metadata: ["wps.source": "\(name)", "wps.retry_in": "\(backoff)"])
                }
                if error.kind == .authentication || error.kind == .config { backoff = .seconds(5) }
                do { try await Task.sleep(for: backoff) } catch { break }
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        logger.debug("redis pub/sub finished", metadata: ["wps.source": "\(name)", "wps.received": "\(counters.received.load(ordering: .relaxed))"])
    }

    /// Reads subscription replies and messages until the connection breaks or the task is cancelled.
    private func receive(_ connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter) async throws {
        while true {
            let value = try await withTaskCancellationHandler {
                try await thread.run { try connection.read() }
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
                    logger.warning("redis pub/sub message not delivered", metadata: ["wps.source": "\(name)", "wps.channel": "\(channel)", "reason": "\(reason)"])
                }
            }
            try await emit.emit(delivery)
        }
    }
}

/// `type: redis` sources.
public struct RedisPubSubSourceFactory: SourceFactory {
    public init() {}
    public var typeName: String { "redis" }
    public var summary: String { "Redis pub/sub channels and patterns, at most once (url, channels, patterns)" }
    public var originFields: Set<String> { ["channel", "pattern"] }

    public func makeSource(name: String, settings: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        settings.checkKeys(["url", "passwordFile", "channels", "patterns", "dataType"], what: "a redis source")
        let url = readRedisURL(settings)
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

/// `url` (required) with an optional `passwordFile` that overrides the URL's password.
func readRedisURL(_ settings: ConfigMapping) -> RedisURL? {
    guard let value = settings.requireKey("url", "redis://[user:password@]host[:port][/db]"), let text = value.string() else { return nil }
    var url: RedisURL
    do {
        url = try RedisURL(parsing: text)
    } catch {
        value.report(error.message)
        return nil
    }
    if settings.has("passwordFile") {
        guard let password = settings.secret("password") else { return nil }
        url.password = password
    }
    return url
}
