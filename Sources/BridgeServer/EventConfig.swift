package import BridgeConfig
package import BridgeCore
import Foundation
package import HTTPGuards
package import WebPubSub
import WebPubSubProtocol

/// `server:`: where the bridge's HTTP listener is.
package struct ServerSettings: Sendable, Equatable {
    package var host: String
    package var port: Int
    /// `reload: true` with `reloadToken`: `POST /-/reload` re-reads the config (as SIGHUP does)
    /// for requests that carry the token.
    package var reloadToken: String?
    /// Header deadline, idle timeout and connection cap (`headerTimeout`, `idleTimeout`, `maxConnections`).
    package var limits = ConnectionLimits()
    /// `adminListen: HOST:PORT`: `/readyz`, `/metrics` and `/-/reload` there instead of on
    /// `listen`, which then serves the event handler (and `/healthz`) alone.
    package var admin: Address?

    /// A listen address.
    package struct Address: Sendable, Equatable {
        package var host: String
        package var port: Int
    }

    package init(host: String = "127.0.0.1", port: Int = 8081) {
        self.host = host
        self.port = port
    }

    /// `server: {listen: HOST:PORT}`.
    package static func read(_ m: ConfigMapping) -> ServerSettings? {
        m.checkKeys(["listen", "adminListen", "reload", "reloadToken", "reloadTokenFile"] + ConnectionLimits.keys, what: "server")
        guard let v = m.requireKey("listen", "HOST:PORT, e.g. 127.0.0.1:8081 or 0.0.0.0:8081"), let text = v.string() else { return nil }
        guard let (host, port) = hostPort(text) else {
            v.report("'\(text)' is not HOST:PORT")
            return nil
        }
        var settings = ServerSettings(host: host, port: port)
        if let a = m.value("adminListen"), let adminText = a.string() {
            if let admin = hostPort(adminText) {
                if admin.port == port, admin.port != 0 {
                    a.report("adminListen must be another port than listen (\(port))")
                } else {
                    settings.admin = Address(host: admin.host, port: admin.port)
                }
            } else {
                a.report("'\(adminText)' is not HOST:PORT, e.g. 127.0.0.1:9090")
            }
        }
        settings.limits = ConnectionLimits.read(m)
        let token = m.secret("reloadToken")
        if m.bool("reload") == true {
            if let token {
                settings.reloadToken = token
            } else {
                m.report("server.reload needs reloadToken (or reloadTokenFile): the endpoint shares the listener with the event handler")
            }
        }
        return settings
    }
}

/// `HOST:PORT` (an empty host is every address).
func hostPort(_ text: String) -> (host: String, port: Int)? {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
    let host = String(text[..<colon])
    return (host.isEmpty ? "0.0.0.0" : host, port)
}

extension EventHandlerConfiguration {
    /// Reads `eventHandler:` (may be absent) and `events:`; sinks are made with `registry`.
    /// `keys` are the access keys of `webpubsub` (or the embedded hub), whose signatures are accepted.
    package static func read(
        eventHandler: ConfigMapping?, events: [ConfigValue]?, keys: [AccessKey], registry: AdapterRegistry, context: AdapterContext
    ) -> EventHandlerConfiguration {
        var config = EventHandlerConfiguration()
        config.accessKeys = keys
        if let m = eventHandler {
            m.checkKeys(
                ["path", "allowedOrigins", "authToken", "authTokenFile", "secondaryAccessKey", "secondaryAccessKeyFile", "connect"],
                what: "eventHandler")
            if let path = m.nonEmptyString("path") {
                let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
                if !path.hasPrefix("/") || path.hasSuffix("/") || path == "/healthz" || path == "/readyz" {
                    m.value("path")?.report("'\(path)' must start with / and not end with one (e.g. /eventhandler)")
                } else if segments.contains(where: { $0.isEmpty || $0.first == ":" || $0.contains("{") || $0.contains("*") || $0 == "-" }) {
                    // The router reads those as parameters or wildcards; "-" is the operator's /-/reload.
                    m.value("path")?.report("'\(path)': a segment may not be empty, start with ':', hold '{' or '*', or be '-' (e.g. /eventhandler)")
                } else {
                    config.path = path
                }
            }
            config.allowedOrigins = m.stringList("allowedOrigins") ?? []
            config.authToken = m.secret("authToken")
            if let secondary = m.secret("secondaryAccessKey") { config.accessKeys.append(AccessKey(secondary)) }
            if let c = m.mapping("connect") { config.connect = readConnect(c) }
        }
        for item in events ?? [] {
            guard let rule = item.mapping() else { continue }
            rule.checkKeys(["hub", "events", "to", "reply"], what: "an events rule")
            let hub = rule.nonEmptyString("hub", required: true)
            if let hub, hub != "*", let problem = WebPubSubNames.hubProblem(hub) { rule.value("hub")?.report(problem) }
            if rule.value("events") == nil {
                rule.report("missing required key 'events': user event names, connected, disconnected, group:NAME, or *")
            }
            let names = rule.stringList("events") ?? []
            if names.contains(where: \.isEmpty) || (rule.has("events") && names.isEmpty) {
                rule.value("events")?.report("event names must not be empty")
            }
            for name in names where name.hasPrefix("group:") {
                let group = name.dropFirst(6)
                if group.isEmpty {
                    rule.value("events")?.report("'group:' needs a group name (group:NAME, or group:* for every group a listener hears)")
                } else if group != "*", let problem = WebPubSubNames.groupProblem(String(group)) {
                    rule.value("events")?.report(problem)
                }
            }
            if names.contains("connect") {
                rule.value("events")?.report("'connect' is answered by eventHandler.connect, not mirrored; use connected")
            }
            let reply = rule.value("reply").map(readReply) ?? .empty
            var sink: (any SinkAdapter)?
            if let to = rule.mapping("to", required: true) {
                sink = CoreConfig.readSink(to, registry: registry, context: context)
            }
            guard let hub, let sink, !names.isEmpty else { continue }
            config.rules.append(EventRule(hub: hub, events: Set(names), sink: sink, reply: reply))
        }
        if config.accessKeys.isEmpty, config.authToken == nil, eventHandler != nil || config.rules.contains(where: \.takesHandlerEvents) {
            // With an Entra ID credential the bridge holds no key: the shared secret is then what authenticates the hub.
            let message =
                "no access key to check ce-signature with: with an Entra ID credential set eventHandler.authToken (the hub's event handler URL carries it as ?code=TOKEN), or give eventHandler.secondaryAccessKey"
            if let eventHandler { eventHandler.report(message) } else { events?.first?.reader.report(message, path: "eventHandler") }
        }
        return config
    }

    /// `reply: ack`, `reply: empty`, `reply: {text: TEMPLATE}` or `reply: {json: VALUE}`.
    static func readReply(_ v: ConfigValue) -> EventRule.Reply {
        let usage =
            "reply is ack, empty, {text: \"TEMPLATE\"} or {json: VALUE}, with \(ReplyTemplate.fields.sorted().map { "{\($0)}" }.joined(separator: " ")) filled"
        if v.isScalar {
            switch v.string() {
            case "ack": return .ack
            case "empty": return .empty
            default:
                v.report(usage)
                return .empty
            }
        }
        guard let m = v.mapping() else { return .empty }
        m.checkKeys(["text", "json"], what: "a reply")
        guard m.has("text") != m.has("json") else {
            m.report(usage)
            return .empty
        }
        if m.has("text") {
            guard let template = m.string("text") else { return .empty }
            if let problem = ReplyTemplate.problem(template) { m.value("text")?.report(problem) }
            return .text(template)
        }
        guard let value = m.value("json"), let json = value.json() else { return .empty }
        for problem in ReplyTemplate.problems(json) { value.report(problem) }
        return .json(json)
    }

    static func readConnect(_ m: ConfigMapping) -> ConnectPolicy {
        m.checkKeys(
            ["allow", "rejectStatus", "rejectReason", "requireUser", "userId", "groups", "roles", "subprotocol", "state"],
            what: "eventHandler.connect")
        var policy = ConnectPolicy()
        policy.allow = m.bool("allow") ?? true
        if let status = m.int("rejectStatus") {
            if [400, 401, 403].contains(status) {
                policy.rejectStatus = status
            } else {
                m.value("rejectStatus")?.report("rejectStatus must be 400, 401 or 403")
            }
        }
        policy.rejectReason = m.string("rejectReason") ?? policy.rejectReason
        policy.requireUser = m.bool("requireUser") ?? false
        func template(_ key: String, _ text: String) -> String? {
            if let problem = ConnectContext.check(text) {
                m.value(key)?.report(problem)
                return nil
            }
            return text
        }
        if let u = m.nonEmptyString("userId") { policy.userId = template("userId", u) }
        policy.groups = (m.stringList("groups") ?? []).compactMap { template("groups", $0) }
        policy.roles = (m.stringList("roles") ?? []).compactMap { template("roles", $0) }
        policy.subprotocol = m.nonEmptyString("subprotocol")
        if let s = m.nonEmptyString("state") { policy.state = template("state", s) }
        return policy
    }
}
