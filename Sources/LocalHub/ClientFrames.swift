import BridgeJSON
import Foundation
import HummingbirdWebSocket
import WebPubSubProtocol

/// What a client sends on a JSON subprotocol, read once by its subprotocol's codec
/// (``ClientFrameCodec``). Names and permissions are the hub's to check, so a frame carries
/// them as sent: a missing `group` is nil here and refused with an error ack by the hub.
enum InboundFrame: Equatable, Sendable {
    case joinGroup(group: String?, ackId: UInt64?)
    case leaveGroup(group: String?, ackId: UInt64?)
    /// `data` is nil when it does not match `dataType`.
    /// `ttlSeconds` is 0 (never expires) when absent, -1 when it is not an integer from 0 to 300.
    case sendToGroup(group: String?, data: FrameData?, noEcho: Bool, ackId: UInt64?, metadata: FrameMetadata = .success([]), ttlSeconds: Int = 0)
    /// `data` is nil when it does not match `dataType`.
    case event(name: String?, data: FrameData?, ackId: UInt64?, metadata: FrameMetadata = .success([]))
    /// `sequenceId` is nil when it is not an unsigned integer (the frame is then ignored).
    case sequenceAck(sequenceId: UInt64?)
    case ping
    /// `invoke` (`@azure/web-pubsub-client`'s `invokeEvent`): an upstream event whose reply comes
    /// back as `invokeResponse`. `target` is as sent (only `event` is served); `data` is nil when
    /// it does not match `dataType`, empty text when the frame has neither.
    case invoke(invocationId: String, target: String?, event: String?, data: FrameData?)
    /// The client no longer waits for this invocation.
    case cancelInvocation(invocationId: String)

    /// The id of a frame that asks for an ack; acks are deduplicated by it.
    var ackId: UInt64? {
        switch self {
        case .joinGroup(_, let id), .leaveGroup(_, let id), .sendToGroup(_, _, _, let id, _, _), .event(_, _, let id, _): id
        case .sequenceAck, .ping, .invoke, .cancelInvocation: nil
        }
    }
}

/// A frame's `metadata`, checked as REST metadata is; none when the frame has none.
typealias FrameMetadata = Result<[MetadataEntry], MetadataError>

/// A message's data with its type: JSON as written, text as UTF-8, binary as it is.
struct FrameData: Equatable, Sendable {
    let dataType: HubDataType
    let payload: [UInt8]
}

/// A frame that cannot be read at all: the connection ends, and `reason` says why.
struct FrameDecodingError: Error, Equatable {
    let reason: String
}

/// What the hub sends a client besides messages (``Outgoing`` renders those once per fan-out).
enum OutboundFrame: Equatable, Sendable {
    case connected(connectionId: String, userId: String?, reconnectionToken: String?)
    case disconnected(reason: String)
    case ack(ackId: UInt64, error: AckError?)
    case pong
    /// The answer to an `invoke`: the event handler's reply (nil: it had no body), or why none came.
    case invokeResponse(invocationId: String, result: Result<FrameData?, AckError>)
}

/// Why an ack reports failure, with the names the service uses.
struct AckError: Error, Equatable, Sendable {
    enum Name: String, Sendable {
        case badRequest = "BadRequest"
        case forbidden = "Forbidden"
        case duplicate = "Duplicate"
        case internalServerError = "InternalServerError"
    }

    let name: Name
    let message: String

    static func forbidden(_ message: String) -> AckError { AckError(name: .forbidden, message: message) }
}

/// Reads and writes the frames of one client subprotocol.
protocol ClientFrameCodec: Sendable {
    func decode(_ message: WebSocketMessage) throws(FrameDecodingError) -> InboundFrame
    func encode(_ frame: OutboundFrame) -> SocketFrame
}

/// `json.webpubsub.azure.v1` and `json.reliable.webpubsub.azure.v1`: one JSON object per text frame.
struct JSONFrameCodec: ClientFrameCodec {
    func decode(_ message: WebSocketMessage) throws(FrameDecodingError) -> InboundFrame {
        guard case .text(let text) = message else {
            throw FrameDecodingError(reason: "Invalid message: the JSON protocols take text frames only")
        }
        guard let json = try? JSONValue(parsing: text), case .object = json, let type = json["type"]?.stringValue else {
            throw FrameDecodingError(reason: "Invalid message: not a JSON object with a \"type\"")
        }
        var ackId: UInt64?
        if let raw = json["ackId"] {
            guard case .number(let n) = raw, let id = UInt64(n) else {
                throw FrameDecodingError(reason: "Invalid message: ackId must be an unsigned integer")
            }
            ackId = id
        }
        switch type {
        case "joinGroup":
            return .joinGroup(group: json["group"]?.stringValue, ackId: ackId)
        case "leaveGroup":
            return .leaveGroup(group: json["group"]?.stringValue, ackId: ackId)
        case "sendToGroup":
            return .sendToGroup(
                group: json["group"]?.stringValue, data: Self.data(json), noEcho: json["noEcho"] == .bool(true), ackId: ackId,
                metadata: Self.metadata(json), ttlSeconds: Self.ttl(json))
        case "event":
            return .event(name: json["event"]?.stringValue, data: Self.data(json), ackId: ackId, metadata: Self.metadata(json))
        case "sequenceAck":
            guard case .number(let n) = json["sequenceId"] ?? .null, let id = UInt64(n) else { return .sequenceAck(sequenceId: nil) }
            return .sequenceAck(sequenceId: id)
        case "ping":
            return .ping
        case "invoke":
            let id = try Self.invocationId(json)
            let data = json["data"] == nil && json["dataType"] == nil ? FrameData(dataType: .text, payload: []) : Self.data(json)
            return .invoke(invocationId: id, target: json["target"]?.stringValue, event: json["event"]?.stringValue, data: data)
        case "cancelInvocation":
            return .cancelInvocation(invocationId: try Self.invocationId(json))
        default:
            throw FrameDecodingError(reason: "Invalid message: unknown type '\(type)'")
        }
    }

    /// `ttlSeconds`: 0 when absent, -1 when not an integer from 0 to 300.
    static func ttl(_ json: JSONValue) -> Int {
        guard let value = json["ttlSeconds"], value != .null else { return 0 }
        guard case .number(let n) = value, let seconds = Int(n), (0...300).contains(seconds) else { return -1 }
        return seconds
    }

    /// `metadata`: an object of string values, checked as REST metadata is.
    static func metadata(_ json: JSONValue) -> FrameMetadata {
        guard let value = json["metadata"], value != .null else { return .success([]) }
        guard case .object(let members) = value else { return .failure(MetadataError("metadata must be an object of string values")) }
        var pairs: [(String, String)] = []
        for (key, member) in members {
            guard let text = member.stringValue else { return .failure(MetadataError("metadata value of '\(key.prefix(64))' must be a string")) }
            pairs.append((key, text))
        }
        return MessageMetadata.validated(pairs, keepCase: true)
    }

    /// The longest `invocationId` taken: the client's own are "1", "2", ... or a UUID.
    static let maxInvocationIdLength = 128

    static func invocationId(_ json: JSONValue) throws(FrameDecodingError) -> String {
        guard let id = json["invocationId"]?.stringValue, !id.isEmpty, id.utf8.count <= maxInvocationIdLength else {
            throw FrameDecodingError(reason: "Invalid message: invocationId must be a string of 1 to \(maxInvocationIdLength) bytes")
        }
        return id
    }

    /// `data` by `dataType` (default json): JSON as written, text as a string, binary as base64.
    static func data(_ json: JSONValue) -> FrameData? {
        let typeName = json["dataType"]?.stringValue ?? "json"
        guard let dataType = HubDataType(rawValue: typeName), let data = json["data"] else { return nil }
        switch dataType {
        case .json: return FrameData(dataType: .json, payload: Array(data.serialized.utf8))
        case .text: return data.stringValue.map { FrameData(dataType: .text, payload: Array($0.utf8)) }
        case .binary: return data.stringValue.flatMap { Data(base64Encoded: $0) }.map { FrameData(dataType: .binary, payload: Array($0)) }
        }
    }

    func encode(_ frame: OutboundFrame) -> SocketFrame {
        .text(Self.text(frame))
    }

    static func text(_ frame: OutboundFrame) -> String {
        switch frame {
        case .connected(let connectionId, let userId, let reconnectionToken):
            var members: [(String, JSONValue)] = [
                ("type", .string("system")), ("event", .string("connected")), ("connectionId", .string(connectionId)),
            ]
            if let userId { members.append(("userId", .string(userId))) }
            if let reconnectionToken { members.append(("reconnectionToken", .string(reconnectionToken))) }
            return JSONValue.object(members).serialized
        case .disconnected(let reason):
            return JSONValue.object([("type", .string("system")), ("event", .string("disconnected")), ("message", .string(reason))]).serialized
        case .ack(let ackId, let error):
            var members: [(String, JSONValue)] = [("type", .string("ack")), ("ackId", .number(String(ackId))), ("success", .bool(error == nil))]
            if let error {
                members.append(("error", .object([("name", .string(error.name.rawValue)), ("message", .string(error.message))])))
            }
            return JSONValue.object(members).serialized
        case .pong:
            return #"{"type":"pong"}"#
        case .invokeResponse(let invocationId, let result):
            var members: [(String, JSONValue)] = [("type", .string("invokeResponse")), ("invocationId", .string(invocationId))]
            switch result {
            case .success(let data):
                members.append(("success", .bool(true)))
                if let data, let value = Self.value(data) {
                    members.append(("dataType", .string(data.dataType.rawValue)))
                    members.append(("data", value))
                }
            case .failure(let error):
                members.append(("success", .bool(false)))
                members.append(("error", .object([("name", .string(error.name.rawValue)), ("message", .string(error.message))])))
            }
            return JSONValue.object(members).serialized
        }
    }
}

extension JSONFrameCodec {
    /// Data as a JSON frame carries it: JSON as itself, text as a string, binary as base64.
    static func value(_ data: FrameData) -> JSONValue? {
        switch data.dataType {
        case .json: try? JSONValue.parse(data.payload)
        case .text: .string(String(decoding: data.payload, as: UTF8.self))
        case .binary: .string(Data(data.payload).base64EncodedString())
        }
    }
}

extension ClientProtocol {
    /// The codec of a subprotocol with frames of its own; nil for plain WebSockets, whose frames
    /// are the messages themselves.
    var codec: (any ClientFrameCodec)? {
        switch self {
        case .json, .reliableJSON: JSONFrameCodec()
        case .protobuf, .reliableProtobuf: ProtobufFrameCodec()
        case .plain: nil
        }
    }
}
