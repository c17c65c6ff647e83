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

/// The client WebSocket endpoint: `/client/hubs/{hub}` (or `/client/?hub=`), the JSON
/// subprotocols, plain WebSockets, and reliable reconnection.
extension LocalHub {
    typealias Upgrade = ShouldUpgradeResult<WebSocketDataHandler<HTTP1WebSocketUpgradeChannel.Context>>

    func shouldUpgrade(_ request: HTTPRequest, channel: any Channel) async -> Upgrade {
        let target = request.path ?? "/"
        let questionMark = target.firstIndex(of: "?")
        let pathPart = String(target[..<(questionMark ?? target.endIndex)])
        let query = Query(questionMark.map { String(target[target.index(after: $0)...]) })
        let segments = pathPart.split(separator: "/").map { percentDecode($0) }
        let hubName: String
        switch segments.count {
        case 3 where segments[0] == "client" && segments[1] == "hubs":
            hubName = segments[2]
        case 1 where segments[0] == "client":
            guard let h = query.first("hub") else {
                rememberRejection(channel, status: 400, message: "missing ?hub=")
                return .dontUpgrade
            }
            hubName = h
        default:
            return .dontUpgrade
        }
        let hub = hubName.lowercased()
        let offered = (request.headerFields[values: .secWebSocketProtocol]).flatMap {
            $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        let proto: ClientProtocol =
            offered.first { ClientProtocol(rawValue: $0.lowercased())?.isJSON == true }.flatMap { ClientProtocol(rawValue: $0.lowercased()) }
            ?? .plain
        var responseHeaders: HTTPFields = [:]
        if proto.isJSON {
            responseHeaders[.secWebSocketProtocol] = proto.rawValue
        } else if let custom = offered.first(where: { !$0.lowercased().hasSuffix(".webpubsub.azure.v1") }) {
            // Browsers fail a handshake that ignores the protocols they offered; the predefined
            // ones this hub does not speak (protobuf) are not echoed, so such clients fail fast.
            responseHeaders[.secWebSocketProtocol] = custom
        }

        // Reliable reconnection: the same connection, authorised by its reconnection token.
        if let connectionId = query.first("awps_connection_id") {
            let token = query.first("awps_reconnection_token") ?? ""
            if let c = registry.connection(connectionId), c.hub == hub, c.proto.isReliable, !c.isEnded,
                let expected = c.reconnectionToken, constantTimeEquals(expected, token)
            {
                return .upgrade(responseHeaders) { inbound, outbound, _ in
                    // Attached only once the socket is open: a client that left during the
                    // handshake does not pin the session.
                    let greeting = c.proto.codec?.encode(.connected(connectionId: c.id, userId: c.userId, reconnectionToken: c.reconnectionToken))
                    let (socket, generation) = c.attach(channel: channel, greeting: greeting, onSlow: self.slowClient(c))
                    self.logger.debug("connection recovered", metadata: [LogKey.connection: "\(c.id)"])
                    try await self.serve(c, socket: socket, generation: generation, inbound: inbound, outbound: outbound)
                }
            }
            // Unknown or expired session: accept, then close with 1008 so the client starts afresh.
            return .upgrade(responseHeaders) { _, outbound, _ in
                // A close frame in the same packet as the 101 can be lost by clients that switch
                // their pipeline only after reading the response (seen with swift-websocket's
                // client under load): give the handshake a moment first.
                try? await Task.sleep(for: .milliseconds(200))
                try await outbound.close(.policyViolation, reason: "The connection cannot be recovered")
            }
        }

        // Authentication.
        var claims: JWTClaims?
        let bearer = request.headerFields.bearerToken
        if let token = query.first("access_token") ?? bearer {
            do {
                claims = try AccessKeyJWT.verify(token, keys: configuration.accessKeys) { aud in
                    LocalHub.audiencePath(aud).lowercased() == "/client/hubs/\(hub)"
                }
            } catch {
                rememberRejection(channel, status: 401, message: "invalid access token: \(error.message)")
                return .dontUpgrade
            }
        } else if !configuration.allowAnonymous {
            rememberRejection(channel, status: 401, message: "an access token is required (?access_token=...)")
            return .dontUpgrade
        }
        var userId = claims?.subject
        var roles = Set(claims?.roles ?? [])
        var groups = claims?.groups ?? []
        var chosenProtocol = proto
        var connectionState: String?
        let connectionId = newConnectionId()

        // The blocking `connect` event.
        if let handler = handler(for: hub, system: "connect") {
            let body = connectBody(claims: claims, query: query, headers: request.headerFields, subprotocols: offered)
            let event = UpstreamEvent(
                kind: .connect, hub: hub, connectionId: connectionId, userId: userId, subprotocol: nil, connectionState: nil,
                body: Array(body.utf8), contentType: "application/json; charset=utf-8")
            do {
                let response = try await upstream.call(handler, event)
                switch response.status {
                case 200..<300:
                    connectionState = response.connectionState
                    if response.status == 200, let json = try? JSONValue.parse(response.body) {
                        if let u = json["userId"]?.stringValue { userId = u }
                        if case .array(let g) = json["groups"] ?? .null { groups += g.compactMap(\.stringValue) }
                        if case .array(let r) = json["roles"] ?? .null { roles.formUnion(r.compactMap(\.stringValue)) }
                        // The handler may choose among the protocols the client offered.
                        if let sp = json["subprotocol"]?.stringValue, !sp.isEmpty, offered.contains(sp) {
                            chosenProtocol = ClientProtocol(rawValue: sp.lowercased()) ?? .plain
                            responseHeaders[.secWebSocketProtocol] = sp
                        }
                    }
                case 400..<500:
                    let reason = String(decoding: response.body.prefix(512), as: UTF8.self)
                    rememberRejection(channel, status: response.status, message: reason.isEmpty ? "rejected by the event handler" : reason)
                    return .dontUpgrade
                default:
                    rememberRejection(channel, status: 500, message: "the event handler answered \(response.status)")
                    return .dontUpgrade
                }
            } catch {
                logger.warning("connect event failed", metadata: [LogKey.hub: "\(hub)", LogKey.error: "\(error)"])
                rememberRejection(channel, status: 500, message: "the event handler could not be reached")
                return .dontUpgrade
            }
        }

        let mode: ClientConnection.PlainMode =
            query.first("webpubsub_mode") == "sendToGroup" ? .sendToGroup(query.first("group") ?? "") : .sendEvent
        let c = ClientConnection(
            id: connectionId, hub: hub, userId: userId, proto: chosenProtocol, plainMode: mode, roles: roles,
            subprotocolHeader: chosenProtocol.isJSON ? chosenProtocol.rawValue : responseHeaders[.secWebSocketProtocol],
            connectionState: connectionState, replayBudget: replayBudget)
        let greeting = chosenProtocol.codec?.encode(.connected(connectionId: c.id, userId: userId, reconnectionToken: c.reconnectionToken))
        let initialGroups = groups
        let finalProtocol = chosenProtocol
        let finalUserId = userId
        let finalState = connectionState
        return .upgrade(responseHeaders) { inbound, outbound, _ in
            // Registered only once the socket is open, so that a client that left during the
            // handshake leaves nothing behind.
            let (socket, generation) = c.attach(channel: channel, greeting: greeting, onSlow: self.slowClient(c))
            self.registry.add(c, groups: initialGroups)
            self.logger.debug(
                "connection opened", metadata: [LogKey.hub: "\(hub)", LogKey.connection: "\(c.id)", LogKey.`protocol`: "\(finalProtocol.rawValue)"])
            if let handler = self.handler(for: hub, system: "connected") {
                let event = UpstreamEvent(
                    kind: .connected, hub: hub, connectionId: c.id, userId: finalUserId, subprotocol: c.subprotocolHeader,
                    connectionState: finalState, body: Array("{}".utf8), contentType: "application/json; charset=utf-8")
                self.spawn { [upstream = self.upstream, logger = self.logger] in
                    do { _ = try await upstream.call(handler, event) } catch {
                        logger.warning("connected event failed", metadata: [LogKey.error: "\(error)"])
                    }
                }
            }
            try await self.serve(c, socket: socket, generation: generation, inbound: inbound, outbound: outbound)
        }
    }

    static let slowClientReason = "SlowClient: the client does not read its messages fast enough"

    /// What a socket does when its client is too slow: the connection ends.
    func slowClient(_ c: ClientConnection) -> @Sendable () -> Void {
        { [self] in
            spawn { await self.terminate(c, reason: Self.slowClientReason, notify: false) }
        }
    }

    func connectBody(claims: JWTClaims?, query: Query, headers: HTTPFields, subprotocols: [String]) -> String {
        var claimMap: [(String, JSONValue)] = []
        if case .object(let members) = claims?.payload ?? .null {
            for (name, value) in members {
                let values: [JSONValue]
                switch value {
                case .array(let items): values = items.map { .string($0.stringValue ?? $0.serialized) }
                case .string(let s): values = [.string(s)]
                default: values = [.string(value.serialized)]
                }
                claimMap.append((name, .array(values)))
            }
        }
        var queryMap: [(String, JSONValue)] = []
        for (name, _) in query.pairs where name != "access_token" && !queryMap.contains(where: { $0.0 == name }) {
            queryMap.append((name, .array(query.all(name).map { .string($0) })))
        }
        var headerMap: [(String, JSONValue)] = []
        for field in headers where field.name != .authorization {
            let name = field.name.canonicalName
            if let i = headerMap.firstIndex(where: { $0.0 == name }), case .array(var values) = headerMap[i].1 {
                values.append(.string(field.value))
                headerMap[i].1 = .array(values)
            } else {
                headerMap.append((name, .array([.string(field.value)])))
            }
        }
        return JSONValue.object([
            ("claims", .object(claimMap)), ("query", .object(queryMap)), ("headers", .object(headerMap)),
            ("subprotocols", .array(subprotocols.map { .string($0) })), ("clientCertificates", .array([])),
        ]).serialized
    }

    /// Runs one socket: reads what the client sends; frames for it are written by the socket
    /// itself (``ClientSocket``), and the close it is asked for is made here.
    func serve(
        _ c: ClientConnection, socket: ClientSocket, generation: Int, inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // After every frame queued before it; nil when the socket was closed for a slow client.
                if let close = await socket.closeRequest() {
                    try await outbound.close(WebSocketErrorCode(codeNumber: Int(close.code)), reason: close.reason)
                }
            }
            var failure: (any Error)?
            do {
                for try await message in inbound.messages(maxSize: configuration.maxMessageBytes) {
                    let keepOpen = await handleInbound(message, from: c)
                    if !keepOpen { break }
                }
            } catch {
                failure = error
            }
            // A socket that a newer one (a reconnect) replaced has nothing more to decide.
            if !c.isEnded && c.currentGeneration == generation {
                if socket.closedAsSlow {
                    // The socket's own close ends the connection; the reason is the same whoever comes first.
                    await terminate(c, reason: Self.slowClientReason, notify: false)
                } else if let failure, let refusal = FrameRefusal(failure) {
                    // A frame RFC 6455 forbids (text that is not UTF-8, a stray continuation, a
                    // message over the limit): the connection ends with the RFC's code, reliable
                    // or not, as a session that sends such frames cannot be trusted to resume.
                    await terminate(c, reason: refusal.reason, notify: false, code: refusal.code)
                } else if c.proto.isReliable {
                    // Dropped without a close from us: keep the session for a reconnect.
                    c.detach(generation: generation)
                    let grace = configuration.reconnectGrace
                    spawn {
                        // Checked often, so that a session ended meanwhile (REST close, hub
                        // shutdown) does not keep this task, and the hub's shutdown, waiting.
                        let deadline = ContinuousClock.now + grace
                        while ContinuousClock.now < deadline, !c.isEnded, c.currentGeneration == generation {
                            do { try await Task.sleep(for: min(.milliseconds(100), deadline - ContinuousClock.now)) } catch { break }
                        }
                        if !c.hasSocket && !c.isEnded && c.currentGeneration == generation {
                            await self.terminate(c, reason: "The client did not reconnect in time", notify: false)
                        }
                    }
                } else {
                    await terminate(c, reason: failure.map { "Connection error: \($0)" } ?? "Normal closure", notify: false)
                }
            }
            // The socket was detached or ended, so its close is queued after what was queued
            // before it: the close reason reaches the client. (A socket replaced by a newer
            // one was closed by the attach; this covers any other way out of the loop.)
            socket.finish()
            // The close must be written before the failure leaves the group: leaving cancels
            // the close task, which could then stop between the handshake's state change and
            // the frame, so that no close frame is ever sent.
            try await group.waitForAll()
            if let failure { throw failure }
        }
    }

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
        case .sendToGroup(let group, let data, let noEcho, _):
            ack(sendToGroup(group, data, noEcho: noEcho, from: c))
        case .event(let name, let data, _):
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
            return await userEvent(name, dataType: data.dataType, payload: data.payload, from: c, ack: ack)
        case .sequenceAck(let sequenceId):
            if c.proto.isReliable, let sequenceId { c.acknowledge(upTo: sequenceId) }
        case .ping:
            c.sendRaw(codec.encode(.pong))
        }
        return true
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
    func sendToGroup(_ group: String?, _ data: FrameData?, noEcho: Bool, from c: ClientConnection) -> AckError? {
        guard let group, WebPubSubNames.groupProblem(group) == nil else { return .forbidden("\"group\" must be a non-empty group name") }
        guard registry.isAllowed(c, .sendToGroup, group: group) else {
            return .forbidden("The connection has no permission to send to group \(group)")
        }
        guard let data else { return .forbidden("\"data\" does not match \"dataType\"") }
        let out = Outgoing(source: .group(group, fromUserId: c.userId), dataType: data.dataType, payload: data.payload)
        Counter(label: MetricName.hubMessagesReceived, dimensions: [("hub", hubLabels.label(c.hub)), ("from", "client")]).increment()
        fanOut(out, to: registry.targets(hub: c.hub, scope: .group(group), excluded: noEcho ? [c.id] : [], filter: nil))
        return nil
    }

    /// A user event to the upstream; its response body goes back to the client.
    func userEvent(
        _ name: String, dataType: HubDataType, payload: [UInt8], from c: ClientConnection, ack: (AckError?) -> Void
    ) async -> Bool {
        guard let handler = handler(for: c.hub, userEvent: name) else {
            // Nobody listens: a plain client's frames have nowhere to go, so the service drops it.
            if !c.proto.isJSON {
                await terminate(c, reason: "No event handler for user event '\(name)'", notify: false)
                return false
            }
            ack(nil)
            return true
        }
        let event = UpstreamEvent(
            kind: .user(name), hub: c.hub, connectionId: c.id, userId: c.userId, subprotocol: c.subprotocolHeader,
            connectionState: c.connectionState, body: payload, contentType: dataType.contentType)
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
                    fanOut(Outgoing(source: .server, dataType: type, payload: type == .json ? compactJSON(response.body) : response.body), to: [c])
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
