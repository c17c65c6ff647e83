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

    /// A refused upgrade: remembered for the channel, then answered as HTTP (``RejectionWriter``).
    struct UpgradeRefusal: Error {
        let status: Int
        let message: String
    }

    /// What the handshake asked for: the hub, the query, the subprotocols offered and the one
    /// taken, and the headers of the 101.
    struct Handshake {
        let hub: String
        let query: Query
        let offered: [String]
        var proto: ClientProtocol
        var responseHeaders: HTTPFields
    }

    /// Who the client is, once its token and the `connect` event said so.
    struct Admission {
        var userId: String?
        var roles: Set<String>
        var groups: [String]
        var connectionState: String?
    }

    /// The upgrade decision: path and subprotocol, then a recovery of a reliable session, or the
    /// token, the `connect` event and a new connection.
    func shouldUpgrade(_ request: HTTPRequest, channel: any Channel) async -> Upgrade {
        do {
            guard var handshake = try Self.handshake(request) else { return .dontUpgrade }
            if let connectionId = handshake.query.first("awps_connection_id") {
                return recover(connectionId, handshake, channel: channel)
            }
            let claims = try authenticateClient(request, handshake)
            let connectionId = newConnectionId()
            var admission = Admission(userId: claims?.subject, roles: Set(claims?.roles ?? []), groups: claims?.groups ?? [])
            if let handler = handler(for: handshake.hub, system: "connect") {
                try await connect(handler, connectionId: connectionId, claims: claims, request: request, handshake: &handshake, admission: &admission)
            }
            return open(connectionId, handshake, admission, channel: channel)
        } catch {
            rememberRejection(channel, status: error.status, message: error.message)
            return .dontUpgrade
        }
    }

    /// `/client/hubs/{hub}` or `/client/?hub=`, and the subprotocol; nil for other paths.
    static func handshake(_ request: HTTPRequest) throws(UpgradeRefusal) -> Handshake? {
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
            guard let h = query.first("hub") else { throw UpgradeRefusal(status: 400, message: "missing ?hub=") }
            hubName = h
        case 4 where segments[0] == "clients" && segments[2] == "hubs":
            // The service's MQTT and Socket.IO endpoints: refused by name, not as a missing page.
            let kind = ClientType(parsing: segments[1])
            throw UpgradeRefusal(
                status: 400,
                message:
                    "this hub does not speak \(kind?.rawValue ?? segments[1]) clients: connect to /client/hubs/\(segments[3]) with a Web PubSub subprotocol (json.webpubsub.azure.v1)"
            )
        default:
            return nil
        }
        let offered = (request.headerFields[values: .secWebSocketProtocol]).flatMap {
            $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        }
        let proto: ClientProtocol =
            offered.first { ClientProtocol(rawValue: $0.lowercased())?.hasFrames == true }.flatMap { ClientProtocol(rawValue: $0.lowercased()) }
            ?? .plain
        var responseHeaders: HTTPFields = [:]
        if proto.hasFrames {
            responseHeaders[.secWebSocketProtocol] = proto.rawValue
        } else if let custom = offered.first(where: { !$0.lowercased().hasSuffix(".webpubsub.azure.v1") }) {
            // Browsers fail a handshake that ignores the protocols they offered; the predefined
            // ones this hub does not speak (protobuf) are not echoed, so such clients fail fast.
            responseHeaders[.secWebSocketProtocol] = custom
        }
        return Handshake(hub: hubName.lowercased(), query: query, offered: offered, proto: proto, responseHeaders: responseHeaders)
    }

    /// Reliable reconnection: the same connection, authorised by its reconnection token. An
    /// unknown or expired session is accepted, then closed with 1008 so the client starts afresh.
    func recover(_ connectionId: String, _ handshake: Handshake, channel: any Channel) -> Upgrade {
        let token = handshake.query.first("awps_reconnection_token") ?? ""
        if let c = registry.connection(connectionId), c.hub == handshake.hub, c.proto.isReliable, !c.isEnded,
            let expected = c.reconnectionToken, constantTimeEquals(expected, token)
        {
            return .upgrade(handshake.responseHeaders) { inbound, outbound, _ in
                // Attached only once the socket is open: a client that left during the
                // handshake does not pin the session.
                let greeting = c.proto.codec?.encode(.connected(connectionId: c.id, userId: c.userId, reconnectionToken: c.reconnectionToken))
                let (socket, generation, expired) = c.attach(channel: channel, greeting: greeting, onSlow: self.slowClient(c))
                if expired > 0 {
                    Counter(label: MetricName.hubMessagesExpired, dimensions: [("hub", self.hubLabels.label(c.hub))]).increment(by: expired)
                }
                self.logger.debug("connection recovered", metadata: [LogKey.connection: "\(c.id)"])
                try await self.serve(c, socket: socket, generation: generation, inbound: inbound, outbound: outbound)
            }
        }
        return .upgrade(handshake.responseHeaders) { _, outbound, _ in
            // A close frame in the same packet as the 101 can be lost by clients that switch
            // their pipeline only after reading the response (seen with swift-websocket's
            // client under load): give the handshake a moment first.
            try? await Task.sleep(for: .milliseconds(200))
            try await outbound.close(.policyViolation, reason: "The connection cannot be recovered")
        }
    }

    /// The client's token (`?access_token=` or `Authorization: Bearer`), for this hub's client
    /// path; nil for an anonymous client where the hub allows those.
    func authenticateClient(_ request: HTTPRequest, _ handshake: Handshake) throws(UpgradeRefusal) -> JWTClaims? {
        guard let token = handshake.query.first("access_token") ?? request.headerFields.bearerToken else {
            guard configuration.allowAnonymous else {
                throw UpgradeRefusal(status: 401, message: "an access token is required (?access_token=...)")
            }
            return nil
        }
        do {
            return try AccessKeyJWT.verify(token, keys: configuration.accessKeys) { aud in
                LocalHub.audiencePath(aud).lowercased() == "/client/hubs/\(handshake.hub)"
            }
        } catch {
            throw UpgradeRefusal(status: 401, message: "invalid access token: \(error.message)")
        }
    }

    /// The blocking `connect` event: the handler may refuse the client, name its user, add
    /// groups and roles, and choose among the subprotocols it offered.
    func connect(
        _ handler: EventHandlerSettings, connectionId: String, claims: JWTClaims?, request: HTTPRequest, handshake: inout Handshake,
        admission: inout Admission
    ) async throws(UpgradeRefusal) {
        let body = connectBody(claims: claims, query: handshake.query, headers: request.headerFields, subprotocols: handshake.offered)
        let event = UpstreamEvent(
            kind: .connect, hub: handshake.hub, connectionId: connectionId, userId: admission.userId, subprotocol: nil, connectionState: nil,
            body: Array(body.utf8), contentType: "application/json; charset=utf-8")
        let response: UpstreamResponse
        do {
            response = try await upstream.call(handler, event)
        } catch {
            logger.warning("connect event failed", metadata: [LogKey.hub: "\(handshake.hub)", LogKey.error: "\(error)"])
            throw UpgradeRefusal(status: 500, message: "the event handler could not be reached")
        }
        switch response.status {
        case 200..<300:
            admission.connectionState = response.connectionState
            guard response.status == 200, let json = try? JSONValue.parse(response.body) else { return }
            if let u = json["userId"]?.stringValue { admission.userId = u }
            if case .array(let g) = json["groups"] ?? .null { admission.groups += g.compactMap(\.stringValue) }
            if case .array(let r) = json["roles"] ?? .null { admission.roles.formUnion(r.compactMap(\.stringValue)) }
            if let sp = json["subprotocol"]?.stringValue, !sp.isEmpty, handshake.offered.contains(sp) {
                handshake.proto = ClientProtocol(rawValue: sp.lowercased()) ?? .plain
                handshake.responseHeaders[.secWebSocketProtocol] = sp
            }
        case 400..<500:
            let reason = String(decoding: response.body.prefix(512), as: UTF8.self)
            throw UpgradeRefusal(status: response.status, message: reason.isEmpty ? "rejected by the event handler" : reason)
        default:
            throw UpgradeRefusal(status: 500, message: "the event handler answered \(response.status)")
        }
    }

    /// A new connection: registered, greeted and announced (`connected`) once its socket is open,
    /// so that a client that left during the handshake leaves nothing behind.
    func open(_ connectionId: String, _ handshake: Handshake, _ admission: Admission, channel: any Channel) -> Upgrade {
        let (hub, proto) = (handshake.hub, handshake.proto)
        let mode: ClientConnection.PlainMode =
            handshake.query.first("webpubsub_mode") == "sendToGroup" ? .sendToGroup(handshake.query.first("group") ?? "") : .sendEvent
        let c = ClientConnection(
            id: connectionId, hub: hub, userId: admission.userId, proto: proto, plainMode: mode, roles: admission.roles,
            subprotocolHeader: proto.hasFrames ? proto.rawValue : handshake.responseHeaders[.secWebSocketProtocol],
            connectionState: admission.connectionState, replayBudget: replayBudget)
        for (role, reason) in c.roleGrants.skipped {
            // As the service: the token still works, the role grants nothing.
            logger.warning(
                "role skipped", metadata: [LogKey.hub: "\(hub)", LogKey.connection: "\(c.id)", LogKey.role: "\(role)", LogKey.reason: "\(reason)"])
        }
        let greeting = proto.codec?.encode(.connected(connectionId: c.id, userId: admission.userId, reconnectionToken: c.reconnectionToken))
        return .upgrade(handshake.responseHeaders) { inbound, outbound, _ in
            let (socket, generation, _) = c.attach(channel: channel, greeting: greeting, onSlow: self.slowClient(c))
            self.registry.add(c, groups: admission.groups)
            self.logger.debug(
                "connection opened", metadata: [LogKey.hub: "\(hub)", LogKey.connection: "\(c.id)", LogKey.`protocol`: "\(proto.rawValue)"])
            if let handler = self.handler(for: hub, system: "connected") {
                let event = UpstreamEvent(
                    kind: .connected, hub: hub, connectionId: c.id, userId: admission.userId, subprotocol: c.subprotocolHeader,
                    connectionState: admission.connectionState, body: Array("{}".utf8), contentType: "application/json; charset=utf-8")
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
                } else if c.proto.isReliable && !socket.closedNormally {
                    // Dropped, or closed with another code than 1000: keep the session for a reconnect
                    // (as the service does; a client's `close()` sends 1000 and ends it below).
                    c.detach(generation: generation)
                    let grace = configuration.reconnectGrace
                    spawn {
                        // Woken by a reconnect or the session's end (REST close, hub shutdown), so
                        // that neither waits for the grace to pass.
                        await c.waitWhileAway(generation: generation, timeout: grace)
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
            // Its own error (the channel already closed) changes nothing: the read's failure is what counts.
            try? await group.waitForAll()
            if let failure { throw failure }
        }
    }
}
