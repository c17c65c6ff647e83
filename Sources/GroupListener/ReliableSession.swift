import BridgeJSON
import Foundation
import Synchronization

/// One session of `json.reliable.webpubsub.azure.v1`: the connection id and reconnection token the
/// service gave, and the sequence ids seen on it. A session outlives a dropped socket (recovery);
/// a new connection is a new session whose ids start again at 1.
final class ReliableSession: Sendable {
    struct State {
        var connectionId: String?
        var reconnectionToken: String?
        /// The highest sequence id received (and kept for handing on, or skipped); later frames
        /// at or below it are resent duplicates.
        var handedOn: UInt64 = 0
        /// The highest id confirmed to the service with `sequenceAck`.
        var acknowledged: UInt64 = 0
    }

    /// The URL the session started with (with its access token).
    let url: String
    private let state = Mutex(State())

    init(url: String) {
        self.url = url
    }

    var connectionId: String? { state.withLock { $0.connectionId } }
    var isEstablished: Bool { connectionId != nil }

    /// The URL that recovers this session after a dropped socket: the original one plus
    /// `awps_connection_id` and `awps_reconnection_token`.
    var recoveryURL: String? {
        state.withLock { s in
            guard let id = s.connectionId, let token = s.reconnectionToken else { return nil }
            let separator = url.contains("?") ? "&" : "?"
            return url + separator + "awps_connection_id=" + Self.encode(id) + "&awps_reconnection_token=" + Self.encode(token)
        }
    }

    enum Connected: Equatable {
        /// The session's first connection.
        case started
        /// The same connection again (a recovery).
        case same
        /// Another connection than the session's: the service started a new one, whose sequence
        /// ids start again (the messages between are gone).
        case replaced
    }

    /// A `connected` system message: the first one starts the session, later ones (after a
    /// recovery) may bring a new reconnection token, or name a new connection.
    func connected(connectionId: String, reconnectionToken: String?) -> Connected {
        state.withLock { s in
            let result: Connected
            switch s.connectionId {
            case nil: result = .started
            case connectionId?: result = .same
            default:
                result = .replaced
                s = State()
            }
            s.connectionId = connectionId
            if let reconnectionToken { s.reconnectionToken = reconnectionToken }
            return result
        }
    }

    enum Arrival: Equatable {
        /// Hand it on.
        case new
        /// Already handed on (resent after a recovery): skip it.
        case duplicate
        /// Ids between the last one and this one never arrived.
        case gap(missing: UInt64)
    }

    /// Classifies a data frame's sequence id. Does not record it: see ``handedOn(_:)``.
    func arrival(_ sequenceId: UInt64) -> Arrival {
        state.withLock { s in
            if sequenceId <= s.handedOn { return .duplicate }
            if s.handedOn > 0, sequenceId > s.handedOn + 1 { return .gap(missing: sequenceId - s.handedOn - 1) }
            return .new
        }
    }

    /// Records that every frame up to `sequenceId` was handed on (or deliberately skipped).
    func handedOn(_ sequenceId: UInt64) {
        state.withLock { s in s.handedOn = max(s.handedOn, sequenceId) }
    }

    /// The id to confirm with `sequenceAck`, when there is a new one; ``acknowledged(_:)`` once sent.
    var pendingAck: UInt64? {
        state.withLock { s in s.handedOn > s.acknowledged ? s.handedOn : nil }
    }

    func acknowledged(_ sequenceId: UInt64) {
        state.withLock { s in s.acknowledged = max(s.acknowledged, sequenceId) }
    }

    /// A new socket: what was confirmed on the last one may not have arrived, so it is sent again.
    func socketOpened() {
        state.withLock { s in s.acknowledged = 0 }
    }

    /// Ids handed on and not yet confirmed to the service.
    var unacknowledged: UInt64 { state.withLock { $0.handedOn - $0.acknowledged } }

    static func encode(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }
}

/// A frame from the service on a JSON subprotocol, as far as a listener cares.
enum ServiceFrame: Equatable {
    case connected(connectionId: String, userId: String?, reconnectionToken: String?)
    case disconnected(message: String)
    /// `type: message` from a group. `data` is the payload's bytes (base64 already decoded),
    /// nil when binary data is not valid base64.
    case groupMessage(group: String, fromUserId: String?, dataType: String, data: [UInt8]?, sequenceId: UInt64?)
    /// `type: message` from the server (REST sends to the connection, user or hub).
    case serverMessage(sequenceId: UInt64?)
    /// ack, pong, unknown types: nothing to do.
    case other
    /// Not a JSON object with a `type`, or a message frame that cannot be read (its sequence id,
    /// when it has one, still counts).
    case malformed(String, sequenceId: UInt64?)

    static func parse(_ text: String) -> ServiceFrame {
        guard let json = try? JSONValue(parsing: text), case .object = json, let type = json["type"]?.stringValue else {
            return .malformed("not a JSON object with a type", sequenceId: nil)
        }
        switch type {
        case "system":
            switch json["event"]?.stringValue {
            case "connected":
                guard let id = json["connectionId"]?.stringValue else { return .malformed("connected without connectionId", sequenceId: nil) }
                return .connected(connectionId: id, userId: json["userId"]?.stringValue, reconnectionToken: json["reconnectionToken"]?.stringValue)
            case "disconnected":
                return .disconnected(message: json["message"]?.stringValue ?? "")
            default:
                return .other
            }
        case "message":
            let sequenceId = json["sequenceId"].flatMap { v -> UInt64? in
                if case .number(let n) = v { return UInt64(n) }
                return nil
            }
            guard json["from"]?.stringValue == "group" else { return .serverMessage(sequenceId: sequenceId) }
            guard let group = json["group"]?.stringValue else { return .malformed("group message without group", sequenceId: sequenceId) }
            let dataType = json["dataType"]?.stringValue ?? "json"
            let data: [UInt8]?
            switch (dataType, json["data"]) {
            case ("text", .string(let s)?): data = Array(s.utf8)
            case ("binary", .string(let s)?): data = Data(base64Encoded: s).map { Array($0) }
            case ("json", let value?): data = Array(value.serialized.utf8)
            case (_, nil): data = dataType == "json" ? Array("null".utf8) : []
            default: return .malformed("message with dataType '\(dataType)' and data of another kind", sequenceId: sequenceId)
            }
            return .groupMessage(group: group, fromUserId: json["fromUserId"]?.stringValue, dataType: dataType, data: data, sequenceId: sequenceId)
        default:
            return .other
        }
    }
}
