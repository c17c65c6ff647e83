package import Foundation
package import NIOCore

/// How a payload is to be read: the three data types of Web PubSub.
package enum DataType: String, Sendable, Hashable, CaseIterable {
    case json, text, binary

    /// The REST `Content-Type` for this data type.
    package var contentType: String {
        switch self {
        case .json: "application/json"
        case .text: "text/plain"
        case .binary: "application/octet-stream"
        }
    }
}

/// Where a message came from: enough to name it in logs and dead letters, and to commit it.
package struct Origin: Sendable, Hashable {
    /// The name of the source in `bridge.yaml`.
    package var source: String
    package var topic: String?
    package var channel: String?
    /// The pattern that matched, for pattern subscriptions.
    package var pattern: String?
    package var stream: String?
    package var partition: Int?
    /// Offset, stream entry id or line number: the position within the partition or stream.
    package var position: String?

    package init(
        source: String, topic: String? = nil, channel: String? = nil, pattern: String? = nil, stream: String? = nil,
        partition: Int? = nil, position: String? = nil
    ) {
        self.source = source
        self.topic = topic
        self.channel = channel
        self.pattern = pattern
        self.stream = stream
        self.partition = partition
        self.position = position
    }

    /// `source/topic[partition]@position`, for logs.
    package var description: String {
        var s = source
        if let topic { s += "/\(topic)" }
        if let channel { s += "/\(channel)" }
        if let stream { s += "/\(stream)" }
        if let partition { s += "[\(partition)]" }
        if let position { s += "@\(position)" }
        return s
    }
}

/// One message taken from a source.
package struct Message: Sendable {
    package var payload: ByteBuffer
    package var dataType: DataType
    package var key: String?
    package var headers: [String: String]
    package var origin: Origin
    /// When the message was produced, if the source knows; otherwise when it was read.
    package var timestamp: Date

    package init(
        payload: ByteBuffer, dataType: DataType, key: String? = nil, headers: [String: String] = [:], origin: Origin,
        timestamp: Date = Date()
    ) {
        self.payload = payload
        self.dataType = dataType
        self.key = key
        self.headers = headers
        self.origin = origin
        self.timestamp = timestamp
    }

    /// The lane this message travels in: its partition where the source has partitions, its key
    /// otherwise. Messages of one lane to one target keep their order.
    package var laneKey: String {
        if let partition = origin.partition { return "p\(partition)" }
        if let key { return "k" + key }
        if let stream = origin.stream { return "s" + stream }
        if let channel = origin.channel { return "c" + channel }
        return ""
    }
}

/// What became of a delivery.
package enum DeliveryOutcome: Sendable, Equatable {
    /// Sent to every target, or written to a dead-letter sink: the source may commit it.
    case done
    /// Not settled (shutdown before it could be sent, or the dead-letter write failed): the
    /// source must not commit it, so that it is read again.
    case failed(String)
}

/// A message with its acknowledgement. The dispatcher settles every delivery exactly once.
package struct Delivery: Sendable {
    package let message: Message
    /// Set when the source could not read the input (a malformed line): the dispatcher
    /// dead-letters the raw input with this reason instead of sending it.
    package let rejection: String?
    private let settle: @Sendable (DeliveryOutcome) -> Void

    package init(message: Message, rejection: String? = nil, settle: @escaping @Sendable (DeliveryOutcome) -> Void = { _ in }) {
        self.message = message
        self.rejection = rejection
        self.settle = settle
    }

    package func ack() { settle(.done) }
    package func nack(_ reason: String) { settle(.failed(reason)) }
    package func complete(_ outcome: DeliveryOutcome) { settle(outcome) }
}
