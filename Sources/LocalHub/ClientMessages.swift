import BridgeCrypto
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import HTTPGuards
import HTTPTypes
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import WebPubSub
import WebPubSubProtocol

/// What a connected client sends: JSON-protocol frames (read by the subprotocol's codec), user
/// events to the upstream, and the frames of plain WebSockets.
extension LocalHub {
    /// Handles one client message; false closes the connection.
    func handleInbound(_ message: WebSocketMessage, from c: ClientConnection) async -> Bool {
        guard let codec = c.proto.codec else { return await handlePlain(message, from: c) }
        let frame: InboundFrame
        do {
            frame = try codec.decode(message)
        } catch {
            await terminate(c, reason: error.reason, notify: true)
            return false
        }
        let ack: (AckError?) -> Void = { error in
            if let ackId = frame.ackId { c.sendRaw(codec.encode(.ack(ackId: ackId, error: error))) }
        }
        if let ackId = frame.ackId, !c.firstUse(ackId: ackId) {
            ack(AckError(name: .duplicate, message: "Message with ack-id: \(ackId) has been processed"))
            return true
        }
        switch frame {
        case .joinGroup(let group, _):
            ack(joinOrLeave(group, join: true, c))
        case .leaveGroup(let group, _):
            ack(joinOrLeave(group, join: false, c))
        case .sendToGroup(let group, let data, let noEcho, _, let metadata, let ttl):
            guard ttl >= 0 else {
                ack(AckError(name: .badRequest, message: "ttlSeconds must be an integer from 0 to 300"))
                return true
            }
            switch metadata {
            case .success(let entries): ack(sendToGroup(group, data, noEcho: noEcho, metadata: entries, ttlSeconds: ttl, from: c))
            case .failure(let error): ack(AckError(name: .badRequest, message: error.description))
            }
        case .event(let name, let data, _, let metadata):
            let entries: [MetadataEntry]
            switch metadata {
            case .success(let e): entries = e
            case .failure(let error):
                ack(AckError(name: .badRequest, message: error.description))
                return true
            }
            guard let name else {
                ack(.forbidden("\"event\" is required"))
                return true
            }
            // The name becomes a header and a URL segment upstream: the service's rule, or no event.
            if let problem = WebPubSubNames.eventProblem(name) {
                ack(.forbidden(problem))
                return true
            }
            guard let data else {
                ack(.forbidden("\"data\" does not match \"dataType\""))
                return true
            }
            Counter(label: MetricName.hubMessagesReceived, dimensions: [("hub", hubLabels.label(c.hub)), ("from", "client")]).increment()
            return await userEvent(name, dataType: data.dataType, payload: data.payload, metadata: entries, from: c, ack: ack)
        case .sequenceAck(let sequenceId):
            if c.proto.isReliable, let sequenceId { c.acknowledge(upTo: sequenceId) }
        case .ping:
            c.sendRaw(codec.encode(.pong))
        case .invoke(let id, let target, let event, let data):
            invoke(id, target: target, event: event, data: data, from: c, codec: codec)
        case .cancelInvocation(let id):
            // The upstream call goes on (the event was sent); its answer is not.
            c.cancelInvocation(id)
        }
        return true
    }

    /// `invoke`: the event goes upstream as a user event, in the background so that the client's
    /// next frames (a `cancelInvocation`, other invocations) are read meanwhile; the handler's
    /// reply comes back as `invokeResponse`, or why there is none.
    func invoke(_ id: String, target: String?, event: String?, data: FrameData?, from c: ClientConnection, codec: any ClientFrameCodec) {
        let answer: @Sendable (Result<FrameData?, AckError>) -> Void = { result in
            c.sendRaw(codec.encode(.invokeResponse(invocationId: id, result: result)))
        }
        let token: UInt64
        switch c.startInvocation(id) {
        case .started(let started): token = started
        case .duplicate:
            return answer(.failure(AckError(name: .badRequest, message: "Invocation '\(id)' is in progress already")))
        case .tooMany:
            return answer(
                .failure(
                    AckError(
                        name: .badRequest, message: "\(ClientConnection.maxInvocations) invocations are in progress, the most a connection may have"))
            )
        }
        let refuse = { (message: String) in
            _ = c.finishInvocation(id, token: token)
            answer(.failure(AckError(name: .badRequest, message: message)))
        }
        if let target, target != "event" { return refuse("Invoke target '\(target)' is not supported: only \"event\" is") }
        guard let event else { return refuse("\"event\" is required") }
        if let problem = WebPubSubNames.eventProblem(event) { return refuse(problem) }
        guard let data else { return refuse("\"data\" does not match \"dataType\"") }
        guard let handler = handler(for: c.hub, userEvent: event) else {
            return refuse("No event handler for event '\(event)' in hub '\(c.hub)'")
        }
        Counter(label: MetricName.hubMessagesReceived, dimensions: [("hub", hubLabels.label(c.hub)), ("from", "client")]).increment()
        let upstreamEvent = UpstreamEvent(
            kind: .user(event), hub: c.hub, connectionId: c.id, userId: c.userId, subprotocol: c.subprotocolHeader,
            connectionState: c.connectionState, body: data.payload, contentType: data.dataType.contentType)
        spawn { [upstream, logger] in
            let result: Result<FrameData?, AckError>
            do {
                let response = try await upstream.call(handler, upstreamEvent)
                if let state = response.connectionState { c.connectionState = state }
                result = Self.invokeResult(response)
            } catch {
                logger.warning("invoke failed", metadata: [LogKey.hub: "\(c.hub)", LogKey.error: "\(error)"])
                result = .failure(AckError(name: .internalServerError, message: "The event handler could not be reached"))
            }
            if c.finishInvocation(id, token: token) { answer(result) }
        }
    }

    /// What an event handler's answer to an invoke becomes: its body with the data type of its
    /// content type, nothing for an empty body, an error for a refusal or a body the protocol cannot carry.
    static func invokeResult(_ response: UpstreamResponse) -> Result<FrameData?, AckError> {
        guard (200..<300).contains(response.status) else {
            return .failure(AckError(name: .internalServerError, message: "The event handler answered \(response.status)"))
        }
        guard !response.body.isEmpty else { return .success(nil) }
        let contentType = response.contentType ?? "text/plain"
        guard let type = HubDataType(contentType: contentType) else {
            return .failure(AckError(name: .internalServerError, message: "The event handler answered with content type '\(contentType)'"))
        }
        guard type != .json || (try? JSONValue.parse(response.body)) != nil else {
            return .failure(AckError(name: .internalServerError, message: "The event handler's JSON answer is not valid JSON"))
        }
        return .success(FrameData(dataType: type, payload: response.body))
    }

    /// `joinGroup` / `leaveGroup`: nil when done, else why not.
    func joinOrLeave(_ group: String?, join: Bool, _ c: ClientConnection) -> AckError? {
        guard let group, WebPubSubNames.groupProblem(group) == nil else { return .forbidden("\"group\" must be a non-empty group name") }
        guard registry.isAllowed(c, .joinLeaveGroup, group: group) else {
            return .forbidden("The connection has no permission to \(join ? "join" : "leave") group \(group)")
        }
        if join {
            guard registry.join(c.id, group: group) != .tooManyGroups else {
                return .forbidden("The connection is in \(registry.maxGroupsPerConnection) groups already, the most it may join")
            }
        } else {
            _ = registry.leave(c.id, group: group)
        }
        return nil
    }

    /// `sendToGroup`: nil when sent, else why not.
    func sendToGroup(
        _ group: String?, _ data: FrameData?, noEcho: Bool, metadata: [MetadataEntry] = [], ttlSeconds: Int = 0, from c: ClientConnection
    ) -> AckError? {
        guard let group, WebPubSubNames.groupProblem(group) == nil else { return .forbidden("\"group\" must be a non-empty group name") }
        guard registry.isAllowed(c, .sendToGroup, group: group) else {
            return .forbidden("The connection has no permission to send to group \(group)")
        }
        guard let data else { return .forbidden("\"data\" does not match \"dataType\"") }
        let out = Outgoing(
            source: .group(group, fromUserId: c.userId), dataType: data.dataType, payload: data.payload, metadata: metadata, ttlSeconds: ttlSeconds)
        Counter(label: MetricName.hubMessagesReceived, dimensions: [("hub", hubLabels.label(c.hub)), ("from", "client")]).increment()
        fanOut(out, to: registry.targets(hub: c.hub, scope: .group(group), excluded: noEcho ? [c.id] : [], filter: nil))
        return nil
    }

    /// A user event to the upstream; its response body goes back to the client.
    func userEvent(
        _ name: String, dataType: HubDataType, payload: [UInt8], metadata: [MetadataEntry] = [], from c: ClientConnection,
        ack: (AckError?) -> Void
    ) async -> Bool {
        guard let handler = handler(for: c.hub, userEvent: name) else {
            // Nobody listens: a plain client's frames have nowhere to go, so the service drops it.
            if !c.proto.hasFrames {
                await terminate(c, reason: "No event handler for user event '\(name)'", notify: false)
                return false
            }
            ack(nil)
            return true
        }
        let event = UpstreamEvent(
            kind: .user(name), hub: c.hub, connectionId: c.id, userId: c.userId, subprotocol: c.subprotocolHeader,
            connectionState: c.connectionState, body: payload, contentType: dataType.contentType, metadata: metadata)
        do {
            let response = try await upstream.call(handler, event)
            guard (200..<300).contains(response.status) else {
                ack(AckError(name: .internalServerError, message: "the event handler answered \(response.status)"))
                await terminate(c, reason: "The event handler refused event '\(name)' (\(response.status))", notify: true)
                return false
            }
            if let state = response.connectionState { c.connectionState = state }
            if response.status == 200, !response.body.isEmpty {
                let type = HubDataType(contentType: response.contentType ?? "") ?? .binary
                if type != .json || (try? JSONValue.parse(response.body)) != nil {
                    fanOut(
                        Outgoing(
                            source: .server, dataType: type, payload: type == .json ? compactJSON(response.body) : response.body,
                            metadata: response.metadata), to: [c])
                }
            }
            ack(nil)
            return true
        } catch {
            ack(AckError(name: .internalServerError, message: "the event handler could not be reached"))
            logger.warning("user event failed", metadata: [LogKey.hub: "\(c.hub)", LogKey.error: "\(error)"])
            return true
        }
    }

    /// A plain WebSocket: each frame is a `message` event, or a publish to the mode's group.
    func handlePlain(_ message: WebSocketMessage, from c: ClientConnection) async -> Bool {
        let (dataType, payload): (HubDataType, [UInt8]) =
            switch message {
            case .text(let s): (.text, Array(s.utf8))
            case .binary(let b): (.binary, Array(b.readableBytesView))
            }
        switch c.plainMode {
        case .sendToGroup(let group):
            guard WebPubSubNames.groupProblem(group) == nil, registry.isAllowed(c, .sendToGroup, group: group) else {
                await terminate(c, reason: "Forbidden: no permission to send to group '\(group)'", notify: false)
                return false
            }
            fanOut(
                Outgoing(source: .group(group, fromUserId: c.userId), dataType: dataType, payload: payload),
                to: registry.targets(hub: c.hub, scope: .group(group), excluded: [], filter: nil))
            return true
        case .sendEvent:
            return await userEvent("message", dataType: dataType, payload: payload, from: c) { _ in }
        }
    }
}

/// A frame the WebSocket library refused while reading (it throws its internal
/// `close(WebSocketErrorCode)` error for those), with the close code RFC 6455 gives for it.
struct FrameRefusal {
    let code: UInt16
    let reason: String

    init?(_ error: any Error) {
        // The library's error type is `package`, so it is recognised by its shape: an enum case
        // `close` carrying the close code.
        let mirror = Mirror(reflecting: error)
        guard mirror.displayStyle == .enum, let child = mirror.children.first, child.label == "close",
            let code = child.value as? WebSocketErrorCode
        else { return nil }
        switch code {
        case .dataInconsistentWithMessage:
            (self.code, reason) = (1007, "Invalid message: a text frame that is not UTF-8")
        case .messageTooLarge:
            (self.code, reason) = (1009, "Invalid message: larger than the hub's limit")
        case .protocolError:
            (self.code, reason) = (1002, "Invalid frame: not allowed by RFC 6455 here")
        default:
            return nil
        }
    }
}
