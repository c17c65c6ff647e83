import BridgeJSON
import Foundation
import NIOCore
import WebPubSubProtocol

/// The client protocol of a connection.
package enum ClientProtocol: String, Sendable {
    case json = "json.webpubsub.azure.v1"
    case reliableJSON = "json.reliable.webpubsub.azure.v1"
    case protobuf = "protobuf.webpubsub.azure.v1"
    case reliableProtobuf = "protobuf.reliable.webpubsub.azure.v1"
    /// No (or an unknown) subprotocol: raw frames only.
    case plain = ""

    /// A Web PubSub subprotocol: frames of its own (`joinGroup`, acks, ...), not raw messages.
    var hasFrames: Bool { self != .plain }
    var isReliable: Bool { self == .reliableJSON || self == .reliableProtobuf }
}

/// The data types of Web PubSub messages.
package enum HubDataType: String, Sendable {
    case json, text, binary

    init?(contentType: String) {
        let media = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        switch media {
        case "application/json": self = .json
        case "text/plain": self = .text
        case "application/octet-stream": self = .binary
        default: return nil
        }
    }

    var contentType: String {
        switch self {
        case .json: "application/json"
        case .text: "text/plain"
        case .binary: "application/octet-stream"
        }
    }
}

/// A message on its way to connections, with its JSON-protocol rendering done once for all of them.
struct Outgoing: Sendable {
    enum Source: Sendable {
        case server
        case group(String, fromUserId: String?)
    }

    let source: Source
    let dataType: HubDataType
    let payload: [UInt8]
    /// `{"type":"message",...,"data":...` without the closing brace, so that a reliable
    /// connection can append its `sequenceId`.
    let jsonPrefix: String
    /// The whole frame for `json.webpubsub.azure.v1` connections, rendered once for all of them.
    let jsonFrameBytes: ByteBuffer
    /// The payload as one buffer, for plain WebSocket connections: text (and JSON) made valid
    /// UTF-8 (an upstream reply may declare another charset), binary as it is.
    let payloadBytes: ByteBuffer

    /// Past this, a message still kept for a client (a reliable session's replay) is dropped
    /// (`messageTtlSeconds`, `ttlSeconds`); nil: it never expires.
    let expiresAt: ContinuousClock.Instant?

    let metadata: [MetadataEntry]

    init(source: Source, dataType: HubDataType, payload: [UInt8], metadata: [MetadataEntry] = [], ttlSeconds: Int = 0) {
        self.metadata = metadata
        self.expiresAt = ttlSeconds > 0 ? .now + .seconds(ttlSeconds) : nil
        self.source = source
        self.dataType = dataType
        self.payload = payload
        var s = #"{"type":"message","from":"#
        switch source {
        case .server:
            s += #""server""#
        case .group(let group, let fromUserId):
            s += #""group","group":"# + JSONValue.quoted(group)
            if let fromUserId { s += #","fromUserId":"# + JSONValue.quoted(fromUserId) }
        }
        s += #","dataType":""# + dataType.rawValue + #"","data":"#
        switch dataType {
        case .json: s += String(decoding: payload, as: UTF8.self)
        case .text: s += JSONValue.quoted(String(decoding: payload, as: UTF8.self))
        case .binary: s += JSONValue.quoted(Data(payload).base64EncodedString())
        }
        if !metadata.isEmpty {
            s += #","metadata":"# + JSONValue.object(metadata.map { ($0.key, .string($0.value)) }).serialized
        }
        jsonPrefix = s
        jsonFrameBytes = ByteBuffer(string: s + "}")
        payloadBytes = dataType == .binary ? ByteBuffer(bytes: payload) : ByteBuffer(string: String(decoding: payload, as: UTF8.self))
    }

    func jsonFrame(sequenceId: UInt64?) -> String {
        if let sequenceId { return jsonPrefix + #","sequenceId":"# + String(sequenceId) + "}" }
        return jsonPrefix + "}"
    }
}

/// What goes down one socket.
enum SocketFrame: Sendable {
    case text(String)
    /// A text frame already in a buffer, shared by every connection it goes to.
    case textBytes(ByteBuffer)
    case binaryBytes(ByteBuffer)
    case binary([UInt8])
    /// Close the socket with a code and reason.
    case close(code: UInt16, reason: String)
}
