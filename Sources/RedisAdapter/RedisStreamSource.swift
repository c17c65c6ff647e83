import BridgeConfig
package import BridgeCore
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import Logging
import NIOCore
import Synchronization

/// Which entry fields carry the payload, its data type and its key; other fields become headers.
package struct StreamFieldNames: Sendable, Equatable {
    package var data = "data"
    package var dataType = "dataType"
    package var key = "key"
    package init() {}
}

/// `type: redis-stream`: Redis Streams in a consumer group, at least once.
///
/// Creates the group when missing (`MKSTREAM`), reads with `XREADGROUP`, and `XACK`s an entry
/// only once it was delivered or dead-lettered. On start (and every `minIdle` after) it takes
/// back what is pending: its own entries from before a restart, and entries other consumers
/// left idle for `minIdle` (`XAUTOCLAIM`). An entry delivered more than `maxDeliveries` times is
/// dead-lettered instead of sent again.
package final class RedisStreamSource: SourceAdapter, HealthReporting {
    package struct Settings: Sendable {
        var url: RedisEndpoint
        var streams: [String]
        var group: String
        var consumer: String
        var startFromEarliest = false
        var minIdle: Duration = .seconds(60)
        var maxDeliveries = 5
        var count = 100
        var block: Duration = .seconds(1)
        var dataType: PayloadType = .auto
        var fields = StreamFieldNames()
    }

    package let name: String
    let settings: Settings
    let logger: Logger
    /// Settled entries waiting for their XACK, and the signal that wakes the acknowledging task.
    private let pendingAcks = Mutex<[(String, String)]>([])
    private let ackSignal: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    private let ackTask = Mutex<Task<Void, Never>?>(nil)
    /// Entries handed to the dispatcher and not settled yet, by stream and id: a pending entry
    /// read again after a reconnect is not sent twice at once.
    private let inFlight = Mutex<Set<String>>([])
    let counters = Counters()
    private let health: ConnectionHealth
    package var healthProblem: String? { health.problem }

    final class Counters: Sendable {
        let read = Atomic<Int>(0)
        let reclaimed = Atomic<Int>(0)
        let poison = Atomic<Int>(0)
        let acked = Atomic<Int>(0)
    }

    init(name: String, settings: Settings, logger: Logger) {
        self.name = name
        self.settings = settings
        self.logger = logger
        health = ConnectionHealth(logger: logger)
        ackSignal = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    package func run(emit: DeliveryEmitter) async throws {
        let ackClient = RedisCommandClient(url: settings.url)
        ackTask.withLock { $0 = Task { await self.acknowledge(ackClient) } }
        let thread = RedisThread()
        defer { thread.shutdown() }
        let loop = ReconnectLoop(
            source: name, health: health, backoff: Backoff(initial: .milliseconds(100), maximum: .seconds(5)),
            message: "redis stream source failed; retrying")
        try await loop.run { attempt in
            let url = settings.url
            let connection = try await thread.run { [block = settings.block] in try RedisBlockingConnection(url, blocking: block) }
            try await createGroups(connection, thread: thread)
            attempt.connected()
            logger.info(
                "redis stream source started",
                metadata: [
                    LogKey.source: "\(name)", LogKey.url: "\(url)", LogKey.streams: "\(settings.streams)", LogKey.group: "\(settings.group)",
                    LogKey.consumer: "\(settings.consumer)",
                ])
            try await readOwnPending(connection, thread: thread, emit: emit)
            try await claimStale(connection, thread: thread, emit: emit)
            var lastClaim = ContinuousClock.now
            while true {
                try await readNew(connection, thread: thread, emit: emit)
                if ContinuousClock.now - lastClaim >= max(settings.minIdle, .seconds(1)) {
                    try await claimStale(connection, thread: thread, emit: emit)
                    lastClaim = .now
                }
            }
        } classify: { [settings] error in
            guard let error = error as? RedisError else { return nil }
            var metadata: Logger.Metadata = [:]
            if error.message.hasPrefix("WRONGTYPE") { metadata[LogKey.hint] = "one of \(settings.streams) exists and is not a stream" }
            // Only a lost connection is worth retrying at once.
            return .init(problem: error.message, metadata: metadata, waitAtLeast: error.kind == .connection ? nil : .seconds(5))
        }
    }

    package func finish() async throws {
        ackSignal.continuation.finish()
        await ackTask.withLock({ $0 })?.value
        logger.debug(
            "redis stream source finished",
            metadata: [
                LogKey.source: "\(name)", LogKey.read: "\(counters.read.load(ordering: .relaxed))",
                LogKey.reclaimed: "\(counters.reclaimed.load(ordering: .relaxed))", LogKey.acked: "\(counters.acked.load(ordering: .relaxed))",
            ])
    }

    // MARK: - Reading

    private func call(_ connection: RedisBlockingConnection, thread: RedisThread, _ args: [String]) async throws -> RedisValue {
        // Checked first: a cancelled task's handler runs at once and shuts the socket down.
        try Task.checkCancellation()
        return try await withTaskCancellationHandler {
            try await thread.run { try connection.command(args) }
        } onCancel: {
            connection.interrupt()
        }
    }

    private func createGroups(_ connection: RedisBlockingConnection, thread: RedisThread) async throws {
        for stream in settings.streams {
            do {
                _ = try await call(
                    connection, thread: thread, ["XGROUP", "CREATE", stream, settings.group, settings.startFromEarliest ? "0" : "$", "MKSTREAM"])
                logger.info("redis consumer group created", metadata: [LogKey.stream: "\(stream)", LogKey.group: "\(settings.group)"])
            } catch let error as RedisError where error.kind == .reply && error.message.hasPrefix("BUSYGROUP") {
                // It exists.
            }
        }
    }

    /// Entries delivered to this consumer before (a restart, or a lost connection) and never
    /// acknowledged, other than those in flight here: listed with XPENDING (which, unlike a
    /// re-read, does not count as a delivery), then claimed for their fields.
    private func readOwnPending(_ connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter) async throws {
        for stream in settings.streams {
            var start = "-"
            while true {
                let reply = try await call(
                    connection, thread: thread, ["XPENDING", stream, settings.group, start, "+", String(settings.count), settings.consumer])
                let ids = (reply.array ?? []).compactMap { $0.array?.first?.text }
                guard let last = ids.last else { break }
                try await claim(ids, stream: stream, connection: connection, thread: thread, emit: emit)
                if ids.count < settings.count { break }
                start = "(" + last
            }
        }
    }

    /// Entries other consumers (or this one, before a crash) left idle for `minIdle`. XAUTOCLAIM
    /// with JUSTID takes them without counting a delivery, so that this consumer's own entries,
    /// in flight for longer than `minIdle` (a long Web PubSub outage), do not creep towards
    /// `maxDeliveries`; the others are then claimed (a delivery) for their fields.
    private func claimStale(_ connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter) async throws {
        let minIdleMs = String(Int64(settings.minIdle / .milliseconds(1)))
        for stream in settings.streams {
            var cursor = "0-0"
            repeat {
                let reply = try await call(
                    connection, thread: thread,
                    ["XAUTOCLAIM", stream, settings.group, settings.consumer, minIdleMs, cursor, "COUNT", String(settings.count), "JUSTID"])
                guard let parts = reply.array, parts.count >= 2 else { break }
                cursor = parts[0].text ?? "0-0"
                let ids = (parts[1].array ?? []).compactMap(\.text)
                // Redis 7 also lists the ids of entries deleted meanwhile: acknowledge them.
                if parts.count >= 3, let deleted = parts[2].array {
                    for id in deleted.compactMap(\.text) { queueAck(stream, id) }
                }
                let claimed = try await claim(ids, stream: stream, connection: connection, thread: thread, emit: emit)
                if claimed > 0 {
                    logger.info("redis stream entries reclaimed", metadata: [LogKey.stream: "\(stream)", LogKey.count: "\(claimed)"])
                }
            } while cursor != "0-0"
        }
    }

    /// Claims `ids` that are not in flight here (XCLAIM: their fields, one more delivery) and
    /// hands them on; ids that do not come back were deleted from the stream and are
    /// acknowledged. Returns how many were handed on.
    @discardableResult
    private func claim(
        _ ids: [String], stream: String, connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter
    ) async throws -> Int {
        let fresh = inFlight.withLock { set in ids.filter { !set.contains(stream + "\u{0}" + $0) } }
        guard !fresh.isEmpty else { return 0 }
        let reply = try await call(connection, thread: thread, ["XCLAIM", stream, settings.group, settings.consumer, "0"] + fresh)
        let entries = (reply.array ?? []).compactMap(Self.parseEntry)
        let returned = Set(entries.map(\.id))
        for id in fresh where !returned.contains(id) { queueAck(stream, id) }
        try await dispatch(entries, stream: stream, reclaimed: true, connection: connection, thread: thread, emit: emit)
        return entries.filter { $0.fields != nil }.count
    }

    private func readNew(_ connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter) async throws {
        let blockMs = String(max(1, settings.block.components.seconds * 1000))
        let reply = try await call(
            connection, thread: thread,
            ["XREADGROUP", "GROUP", settings.group, settings.consumer, "COUNT", String(settings.count), "BLOCK", blockMs, "STREAMS"]
                + settings.streams
                + settings.streams.map { _ in ">" })
        for (stream, entries) in Self.parseRead(reply) {
            try await dispatch(entries, stream: stream, reclaimed: false, connection: connection, thread: thread, emit: emit)
        }
    }

    struct Entry {
        let id: String
        /// nil when the entry was deleted from the stream while pending.
        let fields: [(String, [UInt8])]?
    }

    static func parseEntry(_ value: RedisValue) -> Entry? {
        guard let parts = value.array, parts.count == 2, let id = parts[0].text else { return nil }
        guard let flat = parts[1].array else { return Entry(id: id, fields: nil) }
        var fields: [(String, [UInt8])] = []
        var i = 0
        while i + 1 < flat.count {
            fields.append((flat[i].text ?? "", flat[i + 1].bytes ?? Array((flat[i + 1].text ?? "").utf8)))
            i += 2
        }
        return Entry(id: id, fields: fields)
    }

    /// `XREADGROUP`'s reply: entries by stream.
    static func parseRead(_ value: RedisValue) -> [String: [Entry]] {
        var result: [String: [Entry]] = [:]
        for item in value.array ?? [] {
            guard let pair = item.array, pair.count == 2, let stream = pair[0].text else { continue }
            result[stream] = (pair[1].array ?? []).compactMap(parseEntry)
        }
        return result
    }

    /// Hands entries to the dispatcher (in order); poison entries go with a rejection, so that
    /// they are dead-lettered and then acknowledged.
    private func dispatch(
        _ entries: [Entry], stream: String, reclaimed: Bool, connection: RedisBlockingConnection, thread: RedisThread, emit: DeliveryEmitter
    ) async throws {
        for entry in entries {
            guard let fields = entry.fields else {
                // Deleted while pending: nothing to send.
                queueAck(stream, entry.id)
                continue
            }
            let token = stream + "\u{0}" + entry.id
            if reclaimed && inFlight.withLock({ $0.contains(token) }) { continue }
            var deliveries = 1
            if reclaimed {
                counters.reclaimed.add(1, ordering: .relaxed)
                let pending = try await call(connection, thread: thread, ["XPENDING", stream, settings.group, entry.id, entry.id, "1"])
                if let row = pending.array?.first?.array, row.count == 4, case .integer(let n) = row[3] { deliveries = Int(n) }
            }
            counters.read.add(1, ordering: .relaxed)
            var (message, rejection) = makeMessage(entry, fields: fields, stream: stream)
            if deliveries > settings.maxDeliveries {
                counters.poison.add(1, ordering: .relaxed)
                rejection = "delivered \(deliveries) times, more than maxDeliveries (\(settings.maxDeliveries))"
            }
            if reclaimed { message.headers["wps-deliveries"] = String(deliveries) }
            inFlight.withLock { _ = $0.insert(token) }
            let delivery = Delivery(message: message, rejection: rejection) { [self] outcome in
                switch outcome {
                case .done:
                    // Stays "in flight" until the XACK went through: a reconnect in between
                    // must not send it again.
                    queueAck(stream, entry.id)
                case .failed(let reason):
                    inFlight.withLock { _ = $0.remove(token) }
                    logger.warning(
                        "redis stream entry not delivered; it stays pending and is read again",
                        metadata: [LogKey.source: "\(name)", LogKey.stream: "\(stream)", LogKey.id: "\(entry.id)", LogKey.reason: "\(reason)"])
                }
            }
            do {
                try await emit.emit(delivery)
            } catch {
                inFlight.withLock { _ = $0.remove(token) }
                throw error
            }
        }
    }

    func makeMessage(_ entry: Entry, fields: [(String, [UInt8])], stream: String) -> (Message, String?) {
        let names = settings.fields
        var data: [UInt8]?
        var declared: PayloadType = settings.dataType
        var key: String?
        var headers: [String: String] = [:]
        var rejection: String?
        for (field, value) in fields {
            switch field {
            case names.data: data = value
            case names.key: key = String(decoding: value, as: UTF8.self)
            case names.dataType:
                let text = String(decoding: value, as: UTF8.self)
                if let t = PayloadType(rawValue: text) { declared = t } else { rejection = "field '\(field)' is '\(text)', not json, text or binary" }
            default: headers[field] = String(decoding: value, as: UTF8.self)
            }
        }
        let origin = Origin(source: name, stream: stream, position: entry.id)
        guard let data else {
            // Keep every field in the dead letter.
            let object = JSONValue.object(fields.map { ($0.0, .string(String(decoding: $0.1, as: UTF8.self))) })
            let message = Message(payload: ByteBuffer(string: object.serialized), dataType: .json, key: key, headers: headers, origin: origin)
            return (message, "entry has no '\(names.data)' field")
        }
        let (type, problem) = declared.classify(data)
        let message = Message(
            payload: ByteBuffer(bytes: data), dataType: type, key: key, headers: headers, origin: origin, timestamp: Self.time(of: entry.id))
        return (message, rejection ?? problem)
    }

    /// An entry id starts with its milliseconds since the epoch.
    static func time(of id: String) -> Date {
        guard let ms = id.split(separator: "-").first.flatMap({ Double($0) }) else { return Date() }
        return Date(timeIntervalSince1970: ms / 1000)
    }

    // MARK: - Acknowledging

    private func queueAck(_ stream: String, _ id: String) {
        pendingAcks.withLock { $0.append((stream, id)) }
        ackSignal.continuation.yield()
    }

    /// XACKs settled entries, batched per stream, until `finish`.
    private func acknowledge(_ client: RedisCommandClient) async {
        for await _ in ackSignal.stream {
            await flushAcks(client)
        }
        await flushAcks(client)
        client.close()
    }

    private func flushAcks(_ client: RedisCommandClient) async {
        let batch = pendingAcks.withLock { p in
            defer { p.removeAll() }
            return p
        }
        guard !batch.isEmpty else { return }
        var failed: [(String, String)] = []
        for (stream, ids) in Dictionary(grouping: batch, by: \.0) {
            do {
                _ = try await client.command(["XACK", stream, settings.group] + ids.map(\.1))
                counters.acked.add(ids.count, ordering: .relaxed)
                inFlight.withLock { set in for (_, id) in ids { set.remove(stream + "\u{0}" + id) } }
            } catch {
                logger.error(
                    "redis XACK failed; trying again (entries not acknowledged when the bridge stops are delivered again)",
                    metadata: [LogKey.source: "\(name)", LogKey.stream: "\(stream)", LogKey.count: "\(ids.count)", LogKey.error: "\(error)"])
                failed += ids
            }
        }
        if !failed.isEmpty {
            try? await Task.sleep(for: .seconds(1))
            pendingAcks.withLock { $0 = failed + $0 }
            ackSignal.continuation.yield()
        }
    }
}
