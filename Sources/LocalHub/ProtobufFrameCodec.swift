import BridgeJSON
import Foundation
import HummingbirdWebSocket
import NIOCore
import SwiftProtobuf
import WebPubSubProtocol

/// `protobuf.webpubsub.azure.v1` and `protobuf.reliable.webpubsub.azure.v1`: one
/// `UpstreamMessage` or `DownstreamMessage` (Protobuf/webpubsub_v1.proto) per binary frame.
/// Frames are read into the same ``InboundFrame``s as JSON ones, so the hub checks them alike.
struct ProtobufFrameCodec: ClientFrameCodec {
    func decode(_ message: WebSocketMessage) throws(FrameDecodingError) -> InboundFrame {
        guard case .binary(let buffer) = message else {
            throw FrameDecodingError(reason: "Invalid message: the protobuf protocols take binary frames only")
        }
        let upstream: PBUpstreamMessage
        do {
            upstream = try PBUpstreamMessage(serializedBytes: Array(buffer.readableBytesView))
        } catch {
            throw FrameDecodingError(reason: "Invalid message: not a protobuf UpstreamMessage (\(error))")
        }
        switch upstream.message {
        case .sendToGroupMessage(let m):
            let ttl = m.hasTtlSeconds ? (m.ttlSeconds <= 300 ? Int(m.ttlSeconds) : -1) : 0
            return .sendToGroup(
                group: m.group.isEmpty ? nil : m.group, data: Self.data(m.hasData ? m.data : nil), noEcho: m.noEcho,
                ackId: m.hasAckID ? m.ackID : nil, metadata: Self.metadata(m.metadata), ttlSeconds: ttl)
        case .eventMessage(let m):
            return .event(
                name: m.event.isEmpty ? nil : m.event, data: Self.data(m.hasData ? m.data : nil), ackId: m.hasAckID ? m.ackID : nil,
                metadata: Self.metadata(m.metadata))
        case .joinGroupMessage(let m):
            return .joinGroup(group: m.group.isEmpty ? nil : m.group, ackId: m.hasAckID ? m.ackID : nil)
        case .leaveGroupMessage(let m):
            return .leaveGroup(group: m.group.isEmpty ? nil : m.group, ackId: m.hasAckID ? m.ackID : nil)
        case .sequenceAckMessage(let m):
            return .sequenceAck(sequenceId: m.sequenceID)
        case .pingMessage:
            return .ping
        case .invokeEventMessage(let m):
            guard !m.invocationID.isEmpty, m.invocationID.utf8.count <= JSONFrameCodec.maxInvocationIdLength else {
                throw FrameDecodingError(
                    reason: "Invalid message: invocationId must be a string of 1 to \(JSONFrameCodec.maxInvocationIdLength) bytes")
            }
            let data = m.hasData ? Self.data(m.data) : FrameData(dataType: .text, payload: [])
            return .invoke(invocationId: m.invocationID, target: "event", event: m.event.isEmpty ? nil : m.event, data: data)
        case .cancelInvocationMessage(let m):
            return .cancelInvocation(invocationId: m.invocationID)
        case nil:
            throw FrameDecodingError(
                reason: "Invalid message: an UpstreamMessage this hub does not serve (streaming and group state are not supported)")
        }
    }

    /// `MessageData` as the hub carries data; nil for none, for JSON that does not parse, and
    /// for `protobuf_data` (an `Any` the hub cannot hand to clients of other protocols).
    static func data(_ data: PBMessageData?) -> FrameData? {
        switch data?.data {
        case .textData(let text): FrameData(dataType: .text, payload: Array(text.utf8))
        case .binaryData(let bytes): FrameData(dataType: .binary, payload: Array(bytes))
        case .jsonData(let json): (try? JSONValue(parsing: json)) == nil ? nil : FrameData(dataType: .json, payload: Array(json.utf8))
        case .protobufData, nil: nil
        }
    }

    /// A map's entries in key order (a map has none), checked as REST metadata is.
    static func metadata(_ map: [String: String]) -> FrameMetadata {
        MessageMetadata.validated(map.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }, keepCase: true)
    }

    static func messageData(_ dataType: HubDataType, _ payload: [UInt8]) -> PBMessageData {
        var data = PBMessageData()
        switch dataType {
        case .text: data.textData = String(decoding: payload, as: UTF8.self)
        case .json: data.jsonData = String(decoding: payload, as: UTF8.self)
        case .binary: data.binaryData = Data(payload)
        }
        return data
    }

    func encode(_ frame: OutboundFrame) -> SocketFrame {
        var down = PBDownstreamMessage()
        switch frame {
        case .connected(let connectionId, let userId, let reconnectionToken):
            var connected = PBDownstreamMessage.SystemMessage.ConnectedMessage()
            connected.connectionID = connectionId
            connected.userID = userId ?? ""
            if let reconnectionToken { connected.reconnectionToken = reconnectionToken }
            down.systemMessage.connectedMessage = connected
        case .disconnected(let reason):
            down.systemMessage.disconnectedMessage.reason = reason
        case .ack(let ackId, let error):
            var ack = PBDownstreamMessage.AckMessage()
            ack.ackID = ackId
            ack.success = error == nil
            if let error {
                ack.error.name = error.name.rawValue
                ack.error.message = error.message
            }
            down.ackMessage = ack
        case .pong:
            down.pongMessage = PBDownstreamMessage.PongMessage()
        case .invokeResponse(let invocationId, let result):
            var response = PBDownstreamMessage.InvokeResponseMessage()
            response.invocationID = invocationId
            switch result {
            case .success(let data):
                response.success = true
                if let data { response.data = Self.messageData(data.dataType, data.payload) }
            case .failure(let error):
                response.success = false
                response.error.name = error.name.rawValue
                response.error.message = error.message
            }
            down.invokeResponseMessage = response
        }
        return .binary(Self.bytes(down))
    }

    /// A data message for one connection (`sequenceId` on the reliable protocol).
    static func message(_ message: Outgoing, sequenceId: UInt64?) -> [UInt8] {
        var data = PBDownstreamMessage.DataMessageMessage()
        switch message.source {
        case .server:
            data.from = "server"
        case .group(let group, _):
            data.from = "group"
            data.group = group
        }
        data.data = messageData(message.dataType, message.payload)
        if let sequenceId { data.sequenceID = sequenceId }
        for entry in message.metadata { data.metadata[entry.key] = entry.value }
        var down = PBDownstreamMessage()
        down.dataMessage = data
        return bytes(down)
    }

    static func bytes(_ message: PBDownstreamMessage) -> [UInt8] {
        // Serializing a message built here cannot fail (no required fields, no unknown Any).
        (try? message.serializedBytes()) ?? []
    }
}
