import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import HTTPGuards
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ODataFilter
import WebPubSub
import WebPubSubProtocol

/// The data-plane REST API, at the service's paths, with its status codes.
extension LocalHub {
    /// Authentication, from the headers alone (the body is read only after it): an HS256 JWT
    /// signed with an access key, `aud` naming this path; or an RS256 token of a trusted issuer.
    /// nil when the request may go on.
    func authenticateREST(_ request: Request, rawPath: String) async -> Response? {
        guard let auth = request.headers[.authorization], auth.hasPrefix("Bearer ") else {
            return errorResponse(401, "Unauthorized", "missing bearer token")
        }
        let path = rawPath.trimmingSuffix("/")
        let token = String(auth.dropFirst(7))
        do throws(JWTError) {
            if EntraVerifier.isRS256(token) {
                // An Entra ID token: trusted only when the hub was told its issuer.
                guard let entra else { throw JWTError("an RS256 (Entra ID) token, but the hub trusts no issuer (start it with --trust-issuer URL)") }
                _ = try await entra.verify(token)
            } else {
                _ = try AccessKeyJWT.verify(token, keys: configuration.accessKeys) { aud in
                    Self.audiencePath(aud) == path
                }
            }
        } catch {
            return errorResponse(401, "Unauthorized", "invalid token: \(error.message)")
        }
        return nil
    }

    /// An authenticated request (``authenticateREST(_:rawPath:)`` passed).
    func handleREST(_ request: Request, rawPath: String, segments: [String], query: Query, body: [UInt8]) async -> Response {
        if let wait = checkRate() {
            // Retry-After has whole seconds only; retry-after-ms (which the Azure SDKs read first) says when exactly.
            let ms = max(1, Int((wait / .milliseconds(1)).rounded(.up)))
            return errorResponse(
                429, "TooManyRequests", "rate limit of \(configuration.rateLimit ?? 0) requests per second exceeded",
                headers: [.retryAfter: String(max(1, (ms + 999) / 1000)), HTTPField.Name("retry-after-ms")!: String(ms)])
        }
        if segments == ["health"] {
            return request.method == .head || request.method == .get ? Response(status: .ok) : methodNotAllowed()
        }
        guard query.first("api-version")?.isEmpty == false else {
            return errorResponse(400, "InvalidRequest", "the api-version query parameter is required")
        }
        guard segments.count >= 2, segments[0] == "hubs" else { return notFound(rawPath) }
        let hub = segments[1].lowercased()
        if let problem = WebPubSubNames.hubProblem(segments[1]) { return errorResponse(400, "InvalidRequest", problem) }
        let rest = Array(segments.dropFirst(2))
        let method = request.method
        let excluded = Set(query.all("excluded"))
        var filter: Filter?
        if let text = query.first("filter") {
            do { filter = try Filter(text) } catch { return errorResponse(400, "InvalidRequest", "Invalid filter: \(error) (Parameter 'filter')") }
        }
        if let ttl = query.first("messageTtlSeconds"), !(Int(ttl).map { (0...300).contains($0) } ?? false) {
            return errorResponse(400, "InvalidRequest", "messageTtlSeconds must be 0 to 300")
        }

        switch (method, rest.count, rest.first, rest.last) {
        // Sends
        case (.post, 1, ":send", _):
            return send(request, body: body, hub: hub, scope: .all, excluded: excluded, filter: filter)
        case (.post, 3, "groups", ":send"):
            return validGroup(rest[1]) ?? send(request, body: body, hub: hub, scope: .group(rest[1]), excluded: excluded, filter: filter)
        case (.post, 3, "users", ":send"):
            return send(request, body: body, hub: hub, scope: .user(rest[1]), excluded: [], filter: filter)
        case (.post, 3, "connections", ":send"):
            return send(request, body: body, hub: hub, scope: .connection(rest[1]), excluded: [], filter: nil)
        // Close
        case (.post, 1, ":closeConnections", _):
            await close(registry.targets(hub: hub, scope: .all, excluded: excluded, filter: nil), query)
            return Response(status: .noContent)
        case (.post, 3, "groups", ":closeConnections"):
            await close(registry.targets(hub: hub, scope: .group(rest[1]), excluded: excluded, filter: nil), query)
            return Response(status: .noContent)
        case (.post, 3, "users", ":closeConnections"):
            await close(registry.targets(hub: hub, scope: .user(rest[1]), excluded: excluded, filter: nil), query)
            return Response(status: .noContent)
        case (.delete, 2, "connections", _):
            await close(registry.targets(hub: hub, scope: .connection(rest[1]), excluded: [], filter: nil), query)
            return Response(status: .noContent)
        // Exists
        case (.head, 2, "connections", _):
            return Response(status: registry.targets(hub: hub, scope: .connection(rest[1]), excluded: [], filter: nil).isEmpty ? .notFound : .ok)
        case (.head, 2, "groups", _):
            return Response(status: registry.groupExists(hub: hub, group: rest[1]) ? .ok : .notFound)
        case (.head, 2, "users", _):
            return Response(status: registry.userExists(hub: hub, user: rest[1]) ? .ok : .notFound)
        // Group membership
        case (.put, 4, "groups", _) where rest[2] == "connections":
            if let bad = validGroup(rest[1]) { return bad }
            guard connection(rest[3], in: hub) != nil else { return connectionNotFound(rest[3]) }
            switch registry.join(rest[3], group: rest[1]) {
            case .joined: return Response(status: .ok)
            case .noSuchConnection: return connectionNotFound(rest[3])
            case .tooManyGroups:
                return errorResponse(
                    400, "InvalidRequest", "connection \(rest[3]) is in \(registry.maxGroupsPerConnection) groups already, the most one may join")
            }
        case (.delete, 4, "groups", _) where rest[2] == "connections":
            if connection(rest[3], in: hub) != nil { _ = registry.leave(rest[3], group: rest[1]) }
            return Response(status: .noContent)
        case (.delete, 3, "connections", "groups"):
            if connection(rest[1], in: hub) != nil { _ = registry.leaveAll(rest[1]) }
            return Response(status: .noContent)
        case (.put, 4, "users", _) where rest[2] == "groups":
            if let bad = validGroup(rest[3]) { return bad }
            registry.addUser(rest[1], hub: hub, group: rest[3])
            return Response(status: .ok)
        case (.delete, 4, "users", _) where rest[2] == "groups":
            registry.removeUser(rest[1], hub: hub, group: rest[3])
            return Response(status: .noContent)
        case (.delete, 3, "users", "groups"):
            registry.removeUser(rest[1], hub: hub, group: nil)
            return Response(status: .noContent)
        case (.post, 1, ":addToGroups", _), (.post, 1, ":removeFromGroups", _):
            guard let json = try? JSONValue.parse(body), case .array(let items) = json["groups"] ?? .null,
                let filterText = json["filter"]?.stringValue
            else { return errorResponse(400, "InvalidRequest", "the body must be {\"groups\": [...], \"filter\": \"...\"}") }
            let groups = items.compactMap(\.stringValue)
            for g in groups { if let bad = validGroup(g) { return bad } }
            do {
                registry.updateGroups(hub: hub, groups: groups, filter: try Filter(filterText), add: rest[0] == ":addToGroups")
            } catch {
                return errorResponse(400, "InvalidRequest", "Invalid filter: \(error) (Parameter 'filter')")
            }
            return Response(status: .ok)
        case (.get, 3, "groups", "connections"):
            return listConnections(hub: hub, group: rest[1], query: query)
        // Permissions
        case (_, 4, "permissions", _) where rest[2] == "connections":
            return permission(method: method, hub: hub, permission: rest[1], connectionId: rest[3], target: query.first("targetName"))
        // Client tokens
        case (.post, 1, ":generateToken", _):
            let minutes = Int(query.first("minutesToExpire") ?? "60") ?? 0
            guard (1...525_600).contains(minutes) else { return errorResponse(400, "InvalidRequest", "minutesToExpire must be from 1 to 525600") }
            let port = listening.current ?? configuration.port
            do {
                let access = try ClientAccess.make(
                    endpoint: "http://\(configuration.host):\(port)", hub: hub, key: configuration.accessKeys[0], userId: query.first("userId"),
                    roles: query.all("role"), groups: query.all("group"), expiresIn: .seconds(minutes * 60))
                return json(.object([("token", .string(access.token))]))
            } catch {
                return errorResponse(400, "InvalidRequest", "\(error)")
            }
        default:
            return notFound(rawPath)
        }
    }

    /// `aud` without scheme, host and query, lower-cased, no trailing slash.
    static func audiencePath(_ aud: String) -> String {
        var s = Substring(aud)
        if let scheme = s.range(of: "://") {
            s = s[scheme.upperBound...]
            s = s.firstIndex(of: "/").map { s[$0...] } ?? ""
        }
        if let q = s.firstIndex(of: "?") { s = s[..<q] }
        return String(s).trimmingSuffix("/")
    }

    func notFound(_ path: String) -> Response { errorResponse(404, "NotFound", "no such operation: \(path)") }
    func methodNotAllowed() -> Response { errorResponse(405, "MethodNotAllowed", "method not allowed") }
    func connectionNotFound(_ id: String) -> Response { errorResponse(404, "NotFound", "connection '\(id)' does not exist") }

    func validGroup(_ group: String) -> Response? {
        WebPubSubNames.groupProblem(group).map { errorResponse(400, "InvalidRequest", $0) }
    }

    func connection(_ id: String, in hub: String) -> ClientConnection? {
        registry.connection(id).flatMap { $0.hub == hub ? $0 : nil }
    }

    func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: value.serialized)))
    }

    func send(_ request: Request, body: [UInt8], hub: String, scope: Scope, excluded: Set<String>, filter: Filter?) -> Response {
        guard let dataType = HubDataType(contentType: request.headers[.contentType] ?? "") else {
            return errorResponse(
                415, "UnsupportedMediaType", "Content-Type must be application/json, text/plain or application/octet-stream")
        }
        if dataType == .json, (try? JSONValue.parse(body)) == nil {
            return errorResponse(400, "InvalidRequest", "the body is not valid JSON")
        }
        if dataType == .text, String(validating: body, as: UTF8.self) == nil {
            return errorResponse(400, "InvalidRequest", "the body is not valid UTF-8 text")
        }
        let source: Outgoing.Source
        if case .group(let group) = scope { source = .group(group, fromUserId: nil) } else { source = .server }
        let message = Outgoing(source: source, dataType: dataType, payload: dataType == .json ? compactJSON(body) : body)
        Counter(label: MetricName.hubMessagesReceived, dimensions: [("hub", hubLabels.label(hub)), ("from", "rest")]).increment()
        fanOut(message, to: registry.targets(hub: hub, scope: scope, excluded: excluded, filter: filter))
        return Response(status: .accepted)
    }

    /// JSON text without surrounding white space (a frame's `data` must not carry a newline).
    func compactJSON(_ body: [UInt8]) -> [UInt8] {
        var slice = body[...]
        while let f = slice.first, f == 0x20 || f == 0x0A || f == 0x0D || f == 0x09 { slice = slice.dropFirst() }
        while let l = slice.last, l == 0x20 || l == 0x0A || l == 0x0D || l == 0x09 { slice = slice.dropLast() }
        return Array(slice)
    }

    /// Delivers to each connection; ends those that cannot keep up. The frames are queued on
    /// each connection's socket and written by one event-loop task per loop.
    func fanOut(_ message: Outgoing, to connections: [ClientConnection]) {
        var sent = 0
        var drains = DrainBatch()
        defer {
            drains.run()
            if sent > 0 { Counter(label: MetricName.hubMessagesSent, dimensions: [("hub", hubLabels.label(connections[0].hub))]).increment(by: sent) }
        }
        for c in connections {
            switch c.deliver(message, drains: &drains) {
            case .sent: sent += 1
            case .noSocket: break
            case .slowClient: slowClient(c)()
            case .bufferFull:
                spawn { await self.terminate(c, reason: "Too many messages are not acknowledged", notify: true) }
            }
        }
        if replayBudget.isOver { trimReplays() }
    }

    /// The replay memory of all reliable sessions is over its limit: ends the sessions that
    /// hold the most until it is not.
    func trimReplays() {
        var excess = replayBudget.bytes - replayBudget.limit
        guard excess > 0 else { return }
        let holders = registry.all(hub: nil).filter { $0.proto.isReliable }.map { ($0, $0.replayBytes) }.sorted { $0.1 > $1.1 }
        for (c, bytes) in holders where excess > 0 && bytes > 0 {
            excess -= bytes
            logger.notice(
                "ending the reliable session that holds the most unacknowledged messages: the hub's replay memory is full",
                metadata: [LogKey.hub: "\(c.hub)", LogKey.connection: "\(c.id)", LogKey.bytes: "\(bytes)", LogKey.limit: "\(replayBudget.limit)"])
            // Ended at once, so that the next fan-out does not pick it again.
            c.end(closing: [
                JSONFrameCodec().encode(.disconnected(reason: "Too many messages are not acknowledged: the hub's replay memory is full")),
                .close(code: 1008, reason: "Too many messages are not acknowledged"),
            ])
            spawn { await self.terminate(c, reason: "Too many messages are not acknowledged (replay memory)", notify: false) }
        }
    }

    func close(_ connections: [ClientConnection], _ query: Query) async {
        let reason = query.first("reason") ?? "ClosedByAppServer"
        for c in connections { await terminate(c, reason: reason, notify: true) }
    }

    func listConnections(hub: String, group: String, query: Query) -> Response {
        let members = registry.members(hub: hub, group: group)
        let top = query.first("top").flatMap(Int.init) ?? Int.max
        let pageSize = max(1, min(query.first("maxpagesize").flatMap(Int.init) ?? 200, 200))
        let limit = min(members.count, max(0, top))
        let start = min(max(0, query.first("continuationToken").flatMap(Int.init) ?? 0), limit)
        let end = min(limit, start + max(1, pageSize))
        let page = start < end ? Array(members[start..<end]) : []
        var value: [JSONValue] = []
        for c in page {
            var item: [(String, JSONValue)] = [("connectionId", .string(c.id))]
            if let u = c.userId { item.append(("userId", .string(u))) }
            value.append(.object(item))
        }
        var members_: [(String, JSONValue)] = [("value", .array(value))]
        if end < limit {
            members_.append(
                (
                    "nextLink",
                    .string(
                        "/api/hubs/\(percentEncode(hub))/groups/\(percentEncode(group))/connections?continuationToken=\(end)&maxpagesize=\(pageSize)"
                            + (top == Int.max ? "" : "&top=\(top)"))
                ))
        }
        return json(.object(members_))
    }

    func permission(method: HTTPRequest.Method, hub: String, permission name: String, connectionId: String, target: String?) -> Response {
        guard let permission = Permission(rawValue: name) else {
            return errorResponse(400, "InvalidRequest", "permission must be sendToGroup or joinLeaveGroup")
        }
        let c = connection(connectionId, in: hub)
        switch method {
        case .put:
            guard let c, registry.grant(Grant(permission: permission, target: target), to: c.id) else { return connectionNotFound(connectionId) }
            return Response(status: .ok)
        case .delete:
            if let c { registry.revoke(Grant(permission: permission, target: target), from: c.id) }
            return Response(status: .noContent)
        case .head:
            guard let c else { return Response(status: .notFound) }
            return Response(status: registry.hasGrant(c, permission, target: target) ? .ok : .notFound)
        default:
            return methodNotAllowed()
        }
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        var s = self
        while s.hasSuffix(suffix), s.count > suffix.count { s.removeLast(suffix.count) }
        return s
    }
}
