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
        guard let token = request.headers.bearerToken else {
            return errorResponse(401, "Unauthorized", "missing bearer token")
        }
        let path = rawPath.trimmingSuffix("/")
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
        let metadata: [MetadataEntry]
        switch Self.metadata(request.headers) {
        case .success(let entries): metadata = entries
        case .failure(let error): return errorResponse(400, "InvalidRequest", "\(error) (headers X-WebPubSub-Metadata-*)")
        }
        let source: Outgoing.Source
        if case .group(let group) = scope { source = .group(group, fromUserId: nil) } else { source = .server }
        // Checked by HubScopeMiddleware (0 to 300).
        let ttl = Query(request.uri.query).first("messageTtlSeconds").flatMap { Int($0) } ?? 0
        let message = Outgoing(
            source: source, dataType: dataType, payload: dataType == .json ? compactJSON(body) : body, metadata: metadata, ttlSeconds: ttl)
        Counter(label: MetricName.hubMessagesReceived, dimensions: [("hub", hubLabels.label(hub)), ("from", "rest")]).increment()
        fanOut(message, to: registry.targets(hub: hub, scope: scope, excluded: excluded, filter: filter))
        return Response(status: .accepted)
    }

    /// The `X-WebPubSub-Metadata-<key>` headers of a send or an upstream answer, as the service
    /// reads them: the key lower-cased, a repeated header's last value (after its last comma).
    static func metadata(_ headers: HTTPFields) -> Result<[MetadataEntry], MetadataError> {
        var pairs: [(String, String)] = []
        for field in headers where field.name.canonicalName.hasPrefix(MessageMetadata.headerPrefix) {
            let key = String(field.name.canonicalName.dropFirst(MessageMetadata.headerPrefix.count))
            let value = field.value.split(separator: ",", omittingEmptySubsequences: false).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            if let index = pairs.firstIndex(where: { $0.0 == key }) { pairs[index].1 = value } else { pairs.append((key, value)) }
        }
        return MessageMetadata.validated(pairs)
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
        guard replayBudget.bytes > replayBudget.limit else { return }
        // What is past its TTL goes first: it would not be replayed anyway.
        for c in registry.all(hub: nil) where c.proto.isReliable {
            let expired = c.dropExpiredReplays()
            if expired > 0 { Counter(label: MetricName.hubMessagesExpired, dimensions: [("hub", hubLabels.label(c.hub))]).increment(by: expired) }
        }
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
