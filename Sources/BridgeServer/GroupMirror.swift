package import BridgeCore
import BridgeJSON
import BridgeObservability
import Foundation
package import Logging
import NIOCore

/// Writes what a group listener (`type: webpubsub` source) heard to the sinks of the `events:`
/// rules that name its group (`group:NAME`, `group:*`, `*`), as CloudEvents JSON envelopes of
/// type `azure.webpubsub.group.message`.
package struct GroupMessageMirror: Sendable {
    package let rules: [EventRule]
    let logger: Logger

    package init(rules: [EventRule], logger: Logger) {
        self.rules = rules
        self.logger = logger
    }

    package static let eventType = "azure.webpubsub.group.message"

    /// The rules a listened message goes to; it carries its hub and `group:NAME` event as headers.
    package func rules(for message: Message) -> [EventRule] {
        guard let hub = message.headers["hub"], let event = message.headers["event"] else { return [] }
        return rules.filter { $0.matches(hub: hub, event: event) }
    }

    /// Writes `message` to every matching sink, retrying each failed sink (and only those) with
    /// backoff until it took the record: a sink that is down holds the listener back, which is
    /// then not reading, and the hub keeps what it has not confirmed.
    /// - Throws: `CancellationError` when the bridge stops first.
    package func write(_ message: Message) async throws {
        var pending = rules(for: message)
        guard !pending.isEmpty else { return }
        let record = Self.record(message)
        var backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))
        // One line per 30 s while a sink stays down, not one per retry.
        let health = ConnectionHealth(logger: logger)
        while true {
            try Task.checkCancellation()
            let failures = await EventHandler.write(record, to: pending)
            if failures.isEmpty { return }
            pending = failures.map(\.rule)
            let wait = backoff.next()
            health.failed(
                failures.map(\.reason).joined(separator: "; "), "group message not written; retrying (the listener waits)",
                metadata: [LogKey.origin: "\(message.origin.description)", LogKey.retryIn: "\(wait)"])
            try await Task.sleep(for: wait)
        }
    }

    /// The sink record of a listened message: its envelope, keyed by the sender.
    static func record(_ message: Message) -> SinkRecord {
        let envelope = envelope(message, time: Date())
        var headers = message.headers
        headers["ce-type"] = eventType
        headers["ce-id"] = envelope["id"]?.stringValue
        headers["content-type"] = "application/cloudevents+json"
        return SinkRecord(payload: ByteBuffer(string: envelope.serialized), dataType: .json, key: message.key, headers: headers)
    }

    /// `specversion`, `id` (the listener's connection and sequence id: stable when a message is
    /// written twice), `type`, `source` (`/hubs/{hub}/groups/{group}`), `time`, `datacontenttype`,
    /// `data` or `data_base64`, then `hub`, `group` and `userid` (the sender).
    static func envelope(_ message: Message, time: Date) -> JSONValue {
        let hub = message.headers["hub"] ?? ""
        let group = message.headers["group"] ?? ""
        let id = message.origin.position.map { "\(message.origin.source)/\($0)" } ?? UUID().uuidString
        var members: [(String, JSONValue)] = [
            ("specversion", .string("1.0")), ("id", .string(id)), ("type", .string(eventType)),
            ("source", .string("/hubs/\(hub)/groups/\(group)")), ("time", .string(time.formatted(.iso8601))),
            ("datacontenttype", .string(message.dataType.contentType)),
        ]
        let bytes = Array(message.payload.readableBytesView)
        switch message.dataType {
        case .json:
            members.append(("data", (try? JSONValue.parse(bytes)) ?? .string(String(decoding: bytes, as: UTF8.self))))
        case .text:
            members.append(("data", .string(String(decoding: bytes, as: UTF8.self))))
        case .binary:
            members.append(("data_base64", .string(Data(bytes).base64EncodedString())))
        }
        members.append(("hub", .string(hub)))
        members.append(("group", .string(group)))
        if let user = message.headers["userId"] { members.append(("userid", .string(user))) }
        return .object(members)
    }
}
