import BridgeCore
import BridgeCrypto
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
package import Logging
import NIOCore
package import Synchronization
package import WebPubSub
import WebPubSubProtocol

/// A request to the event handler, independent of the HTTP server.
package struct HandlerRequest: Sendable {
    package var method: String
    package var hub: String
    /// Header names in lower case.
    package var headers: [String: String]
    package var query: Query
    package var body: [UInt8]

    package init(method: String, hub: String, headers: [String: String], query: Query, body: [UInt8]) {
        self.method = method
        self.hub = hub
        self.headers = headers
        self.query = query
        self.body = body
    }
}

package struct HandlerResponse: Sendable {
    package var status: Int
    package var headers: [(String, String)]
    package var body: [UInt8]

    init(_ status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    static func text(_ status: Int, _ message: String) -> HandlerResponse {
        HandlerResponse(status, headers: [("Content-Type", "text/plain; charset=utf-8")], body: Array(message.utf8))
    }

    static func json(_ status: Int, _ value: JSONValue) -> HandlerResponse {
        HandlerResponse(status, headers: [("Content-Type", "application/json; charset=utf-8")], body: Array(value.serialized.utf8))
    }
}

/// Web PubSub's upstream event-handler protocol (CloudEvents over HTTP, binary mode): the
/// abuse-protection handshake, `ce-signature` checks, `connect` answered by the connect policy,
/// and `connected`, `disconnected` and user events written to the sinks of matching `events:`
/// rules, each as a CloudEvents JSON envelope. A user event is answered only after every sink
/// accepted it, so that a sink failure is a 5xx that the service retries.
package final class EventHandler: Sendable {
    package let configuration: EventHandlerConfiguration
    let logger: Logger
    /// Groups the connect policy gave each connection, for the envelopes of its later events.
    private let groupsByConnection = Mutex<[String: [String]]>([:])
    package let stats = Stats()
    /// Refused requests are logged at most 10 times a minute (`wps.not_logged` counts the rest).
    let refusalLog = LogThrottle()

    package final class Stats: Sendable {
        package let events = Atomic<Int>(0)
        package let written = Atomic<Int>(0)
        package let failed = Atomic<Int>(0)
        package let rejected = Atomic<Int>(0)
    }

    package init(configuration: EventHandlerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    package func handle(_ request: HandlerRequest) async -> HandlerResponse {
        count(request, await answer(request))
    }

    /// The checks that need no body: the auth token, the hub, and for an event its CloudEvents
    /// headers and `ce-signature`. The HTTP server runs them before it reads a body, so that a
    /// stranger cannot make it read one. nil when the request may go on.
    package func refusal(_ request: HandlerRequest) -> HandlerResponse? {
        switch preflight(request) {
        case .success: nil
        case .failure(let refused): count(request, refused.response)
        }
    }

    /// Counts a POST's outcome in `wps_bridge_events_total`; returns `response`.
    private func count(_ request: HandlerRequest, _ response: HandlerResponse) -> HandlerResponse {
        if request.method == "POST" {
            let outcome =
                switch response.status {
                case 200..<300: "ok"
                case 500...: "failed"
                default: "refused"
                }
            // Labels from a fixed set (and configured hubs only): a forged request cannot make new series.
            let ceType = request.headers["ce-type"] ?? ""
            let type =
                ceType.hasPrefix("azure.webpubsub.user.")
                ? "user" : ["connect", "connected", "disconnected"].first { ceType == "azure.webpubsub.sys.\($0)" } ?? "other"
            let hub = outcome != "refused" && configuration.knows(hub: request.hub) ? request.hub.lowercased() : "-"
            Counter(label: MetricName.events, dimensions: [("hub", hub), ("type", type), ("outcome", outcome)]).increment()
        }
        return response
    }

    struct Refused: Error {
        let response: HandlerResponse
    }

    /// Everything decided from the method, the path and the headers; the event's attributes
    /// for a POST.
    private func preflight(_ request: HandlerRequest) -> Result<Attributes?, Refused> {
        if let token = configuration.authToken {
            let given = request.query.first("code") ?? request.headers["x-wps-auth-token"] ?? ""
            guard constantTimeEquals(Array(given.utf8), Array(token.utf8)) else {
                return .failure(Refused(response: reject(401, "missing or wrong auth token", request)))
            }
        }
        guard configuration.knows(hub: request.hub) else {
            return .failure(Refused(response: reject(404, "no events are configured for hub '\(request.hub)'", request)))
        }
        switch request.method {
        case "OPTIONS": return .success(nil)
        case "POST": return attributes(request).map { Optional($0) }
        default: return .failure(Refused(response: HandlerResponse(405, headers: [("Allow", "OPTIONS, POST")])))
        }
    }

    private func answer(_ request: HandlerRequest) async -> HandlerResponse {
        switch preflight(request) {
        case .failure(let refused): return refused.response
        case .success(nil): return handshake(request)
        case .success(let attributes?): return await event(request, attributes)
        }
    }

    private func reject(_ status: Int, _ reason: String, _ request: HandlerRequest) -> HandlerResponse {
        stats.rejected.add(1, ordering: .relaxed)
        // Strangers choose how often this happens: 10 lines a minute, then a count.
        if let leftOut = refusalLog.admit() {
            var metadata: Logger.Metadata = [
                LogKey.hub: "\(request.hub)", LogKey.status: "\(status)", LogKey.reason: "\(reason)", LogKey.method: "\(request.method)",
            ]
            if leftOut > 0 { metadata[LogKey.notLogged] = "\(leftOut)" }
            logger.warning("event handler refused a request", metadata: metadata)
        }
        return .text(status, reason)
    }

    /// Abuse protection: the service sends `WebHook-Request-Origin`; an allowed origin is echoed
    /// in `WebHook-Allowed-Origin`.
    private func handshake(_ request: HandlerRequest) -> HandlerResponse {
        guard let origin = request.headers["webhook-request-origin"], !origin.isEmpty else {
            return reject(400, "the abuse-protection request has no WebHook-Request-Origin header", request)
        }
        let allowed =
            configuration.allowedOrigins.contains("*")
            || configuration.allowedOrigins.contains { $0.caseInsensitiveCompare(origin) == .orderedSame }
        guard allowed else { return reject(403, "origin '\(origin)' is not in eventHandler.allowedOrigins", request) }
        return HandlerResponse(200, headers: [("WebHook-Allowed-Origin", origin)])
    }

    /// The CloudEvents attributes of a request.
    struct Attributes {
        let id: String
        let type: String
        let source: String
        let time: String?
        let hub: String
        let connectionId: String
        let eventName: String
        let userId: String?
        let subprotocol: String?
        /// `ce-connectionState`: what a handler set for the connection, as the service sends it.
        let connectionState: String?
        /// `X-WebPubSub-Metadata-<key>`: the message's metadata, keys lower-cased, in key order.
        var metadata: [(String, String)] = []
    }

    /// The CloudEvents attributes of an event, checked: all there, the hub the path's, and
    /// `ce-signature` (or the auth token) authenticating the service.
    private func attributes(_ request: HandlerRequest) -> Result<Attributes, Refused> {
        func refuse(_ status: Int, _ reason: String) -> Result<Attributes, Refused> { .failure(Refused(response: reject(status, reason, request))) }
        let h = request.headers
        guard h["ce-specversion"] == "1.0" else { return refuse(400, "not a CloudEvents 1.0 request (ce-specversion)") }
        var missing: [String] = []
        func required(_ name: String) -> String {
            guard let v = h[name], !v.isEmpty else {
                missing.append(name)
                return ""
            }
            return v
        }
        var attributes = Attributes(
            id: required("ce-id"), type: required("ce-type"), source: required("ce-source"), time: h["ce-time"], hub: required("ce-hub"),
            connectionId: required("ce-connectionid"), eventName: required("ce-eventname"), userId: h["ce-userid"].flatMap { $0.isEmpty ? nil : $0 },
            subprotocol: h["ce-subprotocol"], connectionState: h["ce-connectionstate"].flatMap { $0.isEmpty ? nil : $0 })
        guard missing.isEmpty else { return refuse(400, "missing CloudEvents headers: \(missing.joined(separator: ", "))") }
        // Header names are lower-cased already (HandlerRequest).
        attributes.metadata = h.filter { $0.key.hasPrefix(MessageMetadata.headerPrefix) }
            .map { (String($0.key.dropFirst(MessageMetadata.headerPrefix.count)), $0.value) }.sorted { $0.0 < $1.0 }
        guard attributes.hub.caseInsensitiveCompare(request.hub) == .orderedSame else {
            return refuse(400, "ce-hub '\(attributes.hub)' does not match the path's hub '\(request.hub)'")
        }
        // Without access keys (Entra ID) the auth token, checked above, is what authenticates the hub.
        if !configuration.accessKeys.isEmpty || configuration.authToken == nil {
            guard let signature = h["ce-signature"],
                EventSignature.isValid(signature, connectionId: attributes.connectionId, keys: configuration.accessKeys)
            else {
                return refuse(401, "ce-signature does not match an access key")
            }
        }
        return .success(attributes)
    }

    private func event(_ request: HandlerRequest, _ attributes: Attributes) async -> HandlerResponse {
        switch attributes.type {
        case "azure.webpubsub.sys.connect":
            return connect(request, attributes)
        case "azure.webpubsub.sys.connected":
            return await mirror(request, attributes, isUserEvent: false)
        case "azure.webpubsub.sys.disconnected":
            let response = await mirror(request, attributes, isUserEvent: false)
            // A 5xx is retried by the service: keep the groups for that retry's envelope.
            if response.status < 500 { _ = groupsByConnection.withLock { $0.removeValue(forKey: attributes.connectionId) } }
            return response
        case let type where type.hasPrefix("azure.webpubsub.user."):
            return await mirror(request, attributes, isUserEvent: true)
        default:
            return reject(400, "unknown event type '\(attributes.type)'", request)
        }
    }

    // MARK: - connect

    private func connect(_ request: HandlerRequest, _ attributes: Attributes) -> HandlerResponse {
        let policy = configuration.connect ?? ConnectPolicy()
        guard policy.allow else {
            logger.info(
                "connection refused by the connect policy",
                metadata: [LogKey.hub: "\(attributes.hub)", LogKey.connection: "\(attributes.connectionId)"])
            return .text(policy.rejectStatus, policy.rejectReason)
        }
        guard let body = try? JSONValue.parse(request.body) else { return reject(400, "the connect event's body is not JSON", request) }
        let context = ConnectContext(body: body, userId: attributes.userId, connectionId: attributes.connectionId)
        var userId = attributes.userId
        if let template = policy.userId, let derived = context.render(template), !derived.isEmpty { userId = derived }
        if policy.requireUser && userId == nil {
            return .text(401, "a user id is required")
        }
        let resolved = ConnectContext(body: body, userId: userId, connectionId: attributes.connectionId)
        let groups = policy.groups.compactMap { resolved.render($0) }.filter { !$0.isEmpty }
        // A value filled into a wildcard role (webpubsub.sendToGroups.room-{query.r}) is escaped:
        // ?r=** must not grant every group.
        let roles = policy.roles.compactMap { template in
            let isPattern = Permission.allCases.contains { template.hasPrefix($0.patternRolePrefix) }
            return resolved.render(template, escape: isPattern ? GroupPattern.escape : { $0 })
        }.filter { !$0.isEmpty }
        var members: [(String, JSONValue)] = []
        if let userId { members.append(("userId", .string(userId))) }
        if !groups.isEmpty {
            members.append(("groups", .array(groups.map { .string($0) })))
            // Forgotten at `disconnected`; bounded in case the service is not sending those.
            if configuration.rules.contains(where: { $0.events.contains("disconnected") || $0.events.contains("*") }) {
                groupsByConnection.withLock { if $0.count < 100_000 { $0[attributes.connectionId] = groups } }
            }
        }
        if !roles.isEmpty { members.append(("roles", .array(roles.map { .string($0) }))) }
        if let wanted = policy.subprotocol, case .array(let offered)? = body["subprotocols"], offered.contains(.string(wanted)) {
            members.append(("subprotocol", .string(wanted)))
        }
        var response = HandlerResponse.json(200, .object(members))
        // Base64, as the service recommends for any value that is not a plain token: claims and
        // query values may hold anything, and a header may not.
        if let template = policy.state, let state = resolved.render(template), !state.isEmpty {
            response.headers.append(("ce-connectionState", Data(state.utf8).base64EncodedString()))
        }
        return response
    }

    // MARK: - Mirroring

    private func mirror(_ request: HandlerRequest, _ attributes: Attributes, isUserEvent: Bool) async -> HandlerResponse {
        stats.events.add(1, ordering: .relaxed)
        // `group:NAME` names messages the bridge's listeners hear, never a client's event; and the
        // listeners' own connections are the bridge's business, not the users'.
        let own = attributes.userId.map { configuration.listenerUsers[attributes.hub.lowercased()]?.contains($0) == true } ?? false
        let rules =
            attributes.eventName.hasPrefix("group:") || own
            ? [] : configuration.rules.filter { $0.matches(hub: attributes.hub, event: attributes.eventName) }
        guard !rules.isEmpty else { return HandlerResponse(204) }
        let contentType = request.headers["content-type"] ?? "application/octet-stream"
        let envelope: JSONValue
        switch Self.envelope(
            attributes, contentType: contentType, body: request.body, groups: groupsByConnection.withLock { $0[attributes.connectionId] })
        {
        case .success(let e): envelope = e
        case .failure(let problem): return reject(400, problem.message, request)
        }
        var headers = [
            "hub": attributes.hub, "connectionId": attributes.connectionId, "event": attributes.eventName, "ce-type": attributes.type,
            "ce-id": attributes.id, "content-type": "application/cloudevents+json", "wps-mirrored-from": attributes.hub.lowercased(),
        ]
        if let userId = attributes.userId { headers["userId"] = userId }
        let record = SinkRecord(
            payload: ByteBuffer(string: envelope.serialized), dataType: .json, key: attributes.userId ?? attributes.connectionId, headers: headers)
        let failures = await Self.write(record, to: rules).map(\.reason)
        guard failures.isEmpty else {
            stats.failed.add(1, ordering: .relaxed)
            logger.error(
                "mirrored event not written; answering 500 so that the service retries",
                metadata: [
                    LogKey.hub: "\(attributes.hub)", LogKey.event: "\(attributes.eventName)", LogKey.connection: "\(attributes.connectionId)",
                    LogKey.error: "\(failures.joined(separator: "; "))",
                ])
            return .text(500, "the event could not be written: \(failures.joined(separator: "; "))")
        }
        stats.written.add(1, ordering: .relaxed)
        guard isUserEvent, let reply = rules.lazy.map(\.reply).first(where: { $0 != .empty }) else { return HandlerResponse(204) }
        let template = ReplyTemplate(values: [
            "event": attributes.eventName, "userId": attributes.userId ?? "", "connectionId": attributes.connectionId, "hub": attributes.hub,
            "id": attributes.id,
        ])
        switch reply {
        case .empty: return HandlerResponse(204)
        case .ack: return .json(200, .object([("ack", .string(attributes.id)), ("event", .string(attributes.eventName))]))
        case .text(let text): return .text(200, template.render(text))
        case .json(let json): return .json(200, template.render(json))
        }
    }

    /// Writes `record` to the sink of every rule at once; returns the rules whose sink failed,
    /// with why.
    static func write(_ record: SinkRecord, to rules: [EventRule]) async -> [(rule: EventRule, reason: String)] {
        await withTaskGroup(of: (EventRule, String)?.self) { group in
            for rule in rules {
                group.addTask {
                    do {
                        try await rule.sink.write(record)
                        return nil
                    } catch {
                        return (rule, "\(rule.sink.description): \(error)")
                    }
                }
            }
            var failures: [(rule: EventRule, reason: String)] = []
            for await failure in group { if let failure { failures.append(failure) } }
            return failures
        }
    }

    struct EnvelopeProblem: Error {
        let message: String
    }

    /// The CloudEvents JSON envelope of an event: the standard attributes, the Web PubSub
    /// extensions in lower case, and `data` (JSON or text) or `data_base64`.
    static func envelope(_ a: Attributes, contentType: String, body: [UInt8], groups: [String]?) -> Result<JSONValue, EnvelopeProblem> {
        var members: [(String, JSONValue)] = [
            ("specversion", .string("1.0")), ("id", .string(a.id)), ("type", .string(a.type)), ("source", .string(a.source)),
        ]
        if let time = a.time { members.append(("time", .string(time))) }
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        members.append(("datacontenttype", .string(mediaType.isEmpty ? "application/octet-stream" : mediaType)))
        switch mediaType {
        case "application/json":
            guard let json = try? JSONValue.parse(body) else { return .failure(EnvelopeProblem(message: "the body is not valid JSON")) }
            members.append(("data", json))
        case "text/plain":
            guard let text = String(validating: body, as: UTF8.self) else {
                return .failure(EnvelopeProblem(message: "the body is not valid UTF-8 text"))
            }
            members.append(("data", .string(text)))
        default:
            members.append(("data_base64", .string(Data(body).base64EncodedString())))
        }
        members.append(("hub", .string(a.hub)))
        if let userId = a.userId { members.append(("userid", .string(userId))) }
        members.append(("connectionid", .string(a.connectionId)))
        members.append(("eventname", .string(a.eventName)))
        if let subprotocol = a.subprotocol, !subprotocol.isEmpty { members.append(("subprotocol", .string(subprotocol))) }
        if let state = a.connectionState { members.append(("connectionstate", .string(state))) }
        if !a.metadata.isEmpty { members.append(("metadata", .object(a.metadata.map { ($0.0, .string($0.1)) }))) }
        if let groups { members.append(("groups", .array(groups.map { .string($0) }))) }
        return .success(.object(members))
    }
}
