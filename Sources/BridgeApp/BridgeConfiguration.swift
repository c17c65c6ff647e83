package import AzureIdentity
package import BridgeConfig
package import BridgeCore
package import BridgeServer
import Foundation
import GroupListener
import HTTPGuards
import KafkaAdapter
package import LocalHub
package import Logging
import ODataFilter
import RedisAdapter
import StdioAdapter
package import WebPubSub
import WebPubSubProtocol

/// Where the bridge sends: Azure Web PubSub (or a compatible hub) by connection string or
/// access key, or by endpoint and Entra ID credential.
package struct WebPubSubSettings: Sendable {
    package var connectionString: ConnectionString?
    /// `endpoint` with a `credential` other than `accessKey`.
    package var entra: EntraConnection?
    /// `webpubsub.embedded`: run a local hub inside the bridge and send to it.
    package var embedded: LocalHubConfiguration?
    /// The hub of targets that name none.
    package var defaultHub: String?
    package var client = WebPubSubServiceClient.Configuration()

    /// The host the service names in the abuse-protection handshake (`WebHook-Request-Origin`):
    /// the endpoint's host, or the embedded hub's.
    package var origin: String? {
        if let embedded { return embedded.host }
        return (entra?.endpoint ?? connectionString?.endpoint).flatMap { URLComponents(string: $0)?.host }
    }
}

extension WebPubSubSettings {
    /// The REST client for the configured connection (not the embedded hub).
    package func makeClient(environment: [String: String] = ProcessInfo.processInfo.environment, logger: Logger) throws -> WebPubSubServiceClient {
        if let entra {
            let credential = try entra.credential.make(environment: environment, logger: logger)
            return try WebPubSubServiceClient(endpoint: entra.endpoint, authentication: .entra(credential), configuration: client, logger: logger)
        }
        guard let connectionString else { throw ValidationFailure("webpubsub has no connection") }
        return WebPubSubServiceClient(connectionString: connectionString, configuration: client, logger: logger)
    }
}

/// An endpoint reached with an Entra ID credential.
package struct EntraConnection: Sendable {
    package var endpoint: String
    package var credential: CredentialSettings

    package init(endpoint: String, credential: CredentialSettings) {
        self.endpoint = endpoint
        self.credential = credential
    }
}

/// A whole `bridge.yaml`, read and validated.
package struct BridgeConfiguration: Sendable {
    package var webpubsub: WebPubSubSettings
    package var core: CoreConfig
    /// `server:`: the HTTP listener for the event handler and health endpoints.
    package var server: ServerSettings?
    /// `eventHandler:` and `events:`: client events mirrored into sinks.
    package var eventHandler: EventHandlerConfiguration?
    /// `coordination:`: the lease that elects the replica forwarding `replicas: many` sources
    /// every replica hears. Made at reading, campaigning once the bridge runs.
    package var leadership: (any Leadership)?
    /// Things that are allowed but probably not meant.
    package var warnings: [ConfigIssue]
    /// The sections a reload does not apply, as written (see ``restartSections``).
    package var fingerprints: [String: String] = [:]

    /// What a reload leaves as it is: changing these needs a restart.
    package static let restartSections = ["webpubsub", "server", "eventHandler", "events", "delivery", "coordination"]

    package static let topLevelKeys = ["webpubsub", "server", "eventHandler", "events", "coordination"] + CoreConfig.keys

    /// The adapters this build knows.
    package static func defaultRegistry() -> AdapterRegistry {
        var registry = AdapterRegistry()
        registry.register(source: StdinSourceFactory())
        registry.register(sink: StdoutSinkFactory())
        registry.register(sink: FileSinkFactory())
        registry.register(sink: DropSinkFactory())
        registry.register(source: KafkaSourceFactory())
        registry.register(sink: KafkaSinkFactory())
        registry.register(source: RedisPubSubSourceFactory())
        registry.register(source: RedisStreamSourceFactory())
        registry.register(sink: RedisPublishSinkFactory())
        registry.register(sink: RedisStreamSinkFactory())
        registry.register(source: GroupListenerSourceFactory())
        return registry
    }

    /// Reads and validates `path`.
    /// - Parameter requireWebPubSub: false for `run --dry-run`, which sends nothing.
    /// - Throws: ``ConfigError`` with every problem found.
    package static func load(
        path: String, environment: [String: String] = ProcessInfo.processInfo.environment,
        registry: AdapterRegistry = defaultRegistry(), requireWebPubSub: Bool = true, logger: Logger
    ) throws(ConfigError) -> BridgeConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(
                file: path, issues: [ConfigIssue(path: "", line: nil, column: nil, message: "cannot read the file: \(error.localizedDescription)")])
        }
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try parse(
            yaml: text, file: path, baseDirectory: folder, environment: environment, registry: registry, requireWebPubSub: requireWebPubSub,
            logger: logger)
    }

    /// Reads and validates YAML text.
    package static func parse(
        yaml text: String, file: String = "bridge.yaml", baseDirectory: String = ".", environment: [String: String],
        registry: AdapterRegistry = defaultRegistry(), requireWebPubSub: Bool = true, logger: Logger
    ) throws(ConfigError) -> BridgeConfiguration {
        let reader = ConfigReader(environment: environment, baseDirectory: baseDirectory)
        guard let root = reader.root(yaml: text) else { throw ConfigError(file: file, issues: reader.issues) }
        root.checkKeys(topLevelKeys)
        var webpubsub = WebPubSubSettings()
        if let m = root.mapping("webpubsub", required: requireWebPubSub) {
            webpubsub = readWebPubSub(m, required: requireWebPubSub)
        }
        let context = AdapterContext(logger: logger, environment: environment)
        let mirrors = root.has("events") || root.has("eventHandler")
        let core = CoreConfig.read(
            root, registry: registry, context: context, defaultHub: webpubsub.defaultHub, requireSources: !mirrors, warnUnread: false)
        let server = root.mapping("server").flatMap(ServerSettings.read)
        var eventHandler: EventHandlerConfiguration?
        var readByEvents: Set<String> = []
        if mirrors {
            let keys = webpubsub.embedded?.accessKeys ?? webpubsub.connectionString.map { [$0.accessKey] } ?? []
            let events = root.has("events") ? root.list("events") : nil
            eventHandler = EventHandlerConfiguration.read(
                eventHandler: root.mapping("eventHandler"), events: events, keys: keys, registry: registry, context: context)
            if var h = eventHandler {
                readByEvents = checkListeners(&h, sources: core.sources, events: root.value("events"))
                eventHandler = h
            }
            let needsServer = root.has("eventHandler") || eventHandler?.rules.contains(where: \.takesHandlerEvents) == true
            if server == nil && needsServer {
                root.report("events and eventHandler need server: {listen: HOST:PORT}, where the hub sends events")
            }
            if var h = eventHandler, let origin = webpubsub.origin, !h.allowedOrigins.contains("*") {
                // The service this bridge sends to sends it events: its own origin is allowed, as the
                // SDKs' handlers allow any origin when none is configured; allowedOrigins adds more.
                if !h.allowedOrigins.contains(where: { $0.caseInsensitiveCompare(origin) == .orderedSame }) { h.allowedOrigins.append(origin) }
                eventHandler = h
            }
            if webpubsub.embedded != nil, needsServer {
                if server?.port == 0 {
                    root.value("server")?.report("with the embedded hub, server.listen needs a fixed port (the hub is told where to send)")
                }
            }
        }
        core.warnUnreadSources(root, readElsewhere: readByEvents)
        let leadership = root.mapping("coordination").flatMap { readCoordination($0, logger: logger) }
        if leadership != nil, !core.sources.contains(where: \.leaderOnly) {
            reader.warn(
                "coordination is set, but no source has 'replicas: many' and is heard by every replica (redis, webpubsub): nothing is led",
                path: "coordination")
        }
        if core.deadLetter == nil, !core.routes.isEmpty, core.routes.contains(where: { $0.deadLetter == nil }) {
            reader.warn(
                "no deadLetter sink: messages that cannot be delivered are logged and dropped (add deadLetter: {type: file, path: ...})",
                path: "deadLetter")
        }
        let issues = reader.issues.sorted { ($0.line ?? 0, $0.column ?? 0) < ($1.line ?? 0, $1.column ?? 0) }
        guard issues.isEmpty else { throw ConfigError(file: file, issues: issues) }
        var configuration = BridgeConfiguration(webpubsub: webpubsub, core: core, leadership: leadership, warnings: reader.warnings)
        for section in restartSections { configuration.fingerprints[section] = root.value(section)?.fingerprint ?? "" }
        configuration.server = server
        configuration.eventHandler = eventHandler
        if var embedded = configuration.webpubsub.embedded, let server, let eventHandler {
            for (hub, handlers) in configuration.embeddedEventHandlers(server: server, eventHandler: eventHandler) {
                embedded.eventHandlers[hub, default: []] += handlers
            }
            configuration.webpubsub.embedded = embedded
        }
        return configuration
    }

    /// Checks that each `group:NAME` of an `events:` rule is heard by a listener
    /// (`type: webpubsub` source) of the rule's hub, and notes the listeners' user ids so that
    /// their own connection events are not mirrored. Returns the listeners some rule reads.
    static func checkListeners(_ handler: inout EventHandlerConfiguration, sources: [SourceEntry], events: ConfigValue?) -> Set<String> {
        let listeners = sources.compactMap { $0.adapter as? any GroupListening }
        for listener in listeners {
            handler.listenerUsers[listener.listenedHub.lowercased(), default: []].insert(listener.listenerUserId)
        }
        var read: Set<String> = []
        for rule in handler.rules {
            let hubListeners = listeners.filter { rule.hub == "*" || rule.hub.caseInsensitiveCompare($0.listenedHub) == .orderedSame }
            for listener in hubListeners
            where listener.listenedGroups.contains(where: { rule.matches(hub: listener.listenedHub, event: "group:\($0)") }) {
                read.insert(listener.name)
            }
            for group in rule.groups where group != "*" && !hubListeners.contains(where: { $0.listenedGroups.contains(group) }) {
                events?.report(
                    "no webpubsub source listens to group '\(group)' of hub '\(rule.hub)' (add one: {type: webpubsub, hub: ..., groups: [\(group)]})")
            }
            if rule.groups.contains("*"), !rule.events.contains("*"), hubListeners.isEmpty {
                events?.report("group:* needs a webpubsub source listening to hub '\(rule.hub)'")
            }
        }
        return read
    }

    /// `coordination: {redis: {url, key, ttl}} or {kafka: {brokers, topic, group, ttl}}, id`.
    static func readCoordination(_ m: ConfigMapping, logger: Logger) -> (any Leadership)? {
        m.checkKeys(["redis", "kafka", "id"], what: "coordination")
        let id = m.nonEmptyString("id") ?? "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"
        switch (m.has("redis"), m.has("kafka")) {
        case (true, true):
            m.report("give one of 'redis' and 'kafka' for the lease, not both")
            return nil
        case (false, false):
            m.report("coordination needs 'redis: {url: ...}' or 'kafka: {brokers: ...}': where the replicas hold their lease")
            return nil
        case (true, false):
            return m.mapping("redis").flatMap { RedisLeadership.Settings.read($0, id: id) }.map { RedisLeadership(settings: $0, logger: logger) }
        case (false, true):
            return m.mapping("kafka").flatMap { KafkaLeadership.Settings.read($0, id: id) }.map { KafkaLeadership(settings: $0, logger: logger) }
        }
    }

    /// Why `path` cannot serve as `webpubsub.caFile`, or nil.
    static func caFileProblem(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else {
            return "cannot read the CA file '\(path)' (give a readable PEM file of the certificate authorities to trust)"
        }
        guard String(decoding: data, as: UTF8.self).contains("-----BEGIN CERTIFICATE-----") else {
            return "the CA file '\(path)' holds no PEM certificate ('-----BEGIN CERTIFICATE-----')"
        }
        return nil
    }

    static func readWebPubSub(_ m: ConfigMapping, required: Bool) -> WebPubSubSettings {
        m.checkKeys(
            [
                "connectionString", "endpoint", "accessKey", "accessKeyFile", "credential", "embedded", "hub", "apiVersion", "requestTimeout",
                "connectTimeout", "maxConnections", "caFile",
            ],
            what: "webpubsub")
        var settings = WebPubSubSettings()
        if let hub = m.nonEmptyString("hub") {
            if let problem = WebPubSubNames.hubProblem(hub) { m.value("hub")?.report(problem) } else { settings.defaultHub = hub }
        }
        settings.client.apiVersion = m.nonEmptyString("apiVersion") ?? settings.client.apiVersion
        settings.client.requestTimeout = m.duration("requestTimeout") ?? settings.client.requestTimeout
        settings.client.connectTimeout = m.duration("connectTimeout") ?? settings.client.connectTimeout
        settings.client.maxConnections = m.int("maxConnections", range: 1...4096) ?? settings.client.maxConnections
        if let caFile = m.nonEmptyString("caFile").map(m.reader.absolutePath) {
            if let problem = Self.caFileProblem(caFile) { m.value("caFile")?.report(problem) } else { settings.client.caFile = caFile }
        }
        if let e = m.value("embedded") {
            if m.has("connectionString") || m.has("endpoint") || m.has("credential") {
                m.report("give 'embedded' or a connection ('connectionString' / 'endpoint'), not both")
            }
            // `embedded: {}` or `embedded: true` take every default.
            if e.isScalar, let flag = m.bool("embedded") {
                settings.embedded = flag ? LocalHubConfiguration(accessKeys: [LocalHubConfiguration.randomAccessKey()]) : nil
            } else if let em = e.mapping() {
                settings.embedded = LocalHubConfiguration(reading: em)
            }
            return settings
        }
        let credential = m.value("credential").flatMap(readCredential)
        // A broken credential block is reported; guessing at what was meant would add noise.
        if m.has("credential"), credential == nil { return settings }
        if m.has("connectionString"), let credential, credential != .accessKey {
            m.value("credential")?.report("a connection string carries an access key; with an Entra ID credential give 'endpoint' instead")
        }
        if case .entra(let entra) = credential {
            if m.has("accessKey") || m.has("accessKeyFile") {
                m.report("'accessKey' goes with credential type accessKey, not \(entra.typeName)")
            }
            guard let endpoint = m.nonEmptyString("endpoint", required: !m.has("connectionString")) else { return settings }
            do {
                settings.entra = EntraConnection(
                    endpoint: try ConnectionString(endpoint: endpoint, accessKey: AccessKey("")).endpoint, credential: entra)
            } catch {
                m.value("endpoint")?.report(error.message)
            }
            return settings
        }
        switch (m.has("connectionString"), m.has("endpoint")) {
        case (true, true):
            m.report("give 'connectionString' or 'endpoint' (with 'accessKey'), not both")
        case (true, false):
            if m.has("accessKey") || m.has("accessKeyFile") {
                m.report("'accessKey' goes with 'endpoint'; a connection string carries its own key")
            }
            guard let v = m.value("connectionString"), let text = v.string() else { break }
            if text.isEmpty {
                if required { v.report("connection string is empty (is WEBPUBSUB_CONNECTION_STRING set?)") }
                break
            }
            do {
                settings.connectionString = try ConnectionString(parsing: text)
            } catch {
                v.report("invalid connection string: \(error.message)")
            }
        case (false, true):
            let endpoint = m.nonEmptyString("endpoint")
            let key = m.secret("accessKey", required: true)
            if let endpoint, let key {
                do {
                    settings.connectionString = try ConnectionString(endpoint: endpoint, accessKey: AccessKey(key))
                } catch {
                    m.value("endpoint")?.report(error.message)
                }
            }
        case (false, false):
            if required { m.report("webpubsub needs 'connectionString', 'endpoint' with 'accessKey' / 'accessKeyFile', or 'embedded'") }
        }
        return settings
    }

    enum CredentialChoice: Equatable {
        case accessKey
        case entra(CredentialSettings)
    }

    /// `credential: TYPE` or `credential: {type: TYPE, ...}`.
    static func readCredential(_ v: ConfigValue) -> CredentialChoice? {
        let types = ["accessKey"] + CredentialSettings.typeNames
        let type: String?
        let m: ConfigMapping?
        if v.isScalar {
            type = v.string()
            m = nil
        } else if let mapping = v.mapping() {
            type = mapping.nonEmptyString("type", required: true)
            m = mapping
        } else {
            return nil
        }
        guard let type else { return nil }
        guard types.contains(type) else {
            v.report("unknown credential type '\(type)'; known: \(types.joined(separator: ", "))")
            return nil
        }
        if type == "accessKey" {
            m?.checkKeys(["type"], what: "an accessKey credential")
            return .accessKey
        }
        return CredentialSettings.read(type: type, m, at: v).map(CredentialChoice.entra)
    }

    /// The event handlers that make the embedded hub call this bridge: for each hub of the
    /// `events:` rules (and the default hub, for `*` rules and the connect policy).
    func embeddedEventHandlers(server: ServerSettings, eventHandler: EventHandlerConfiguration) -> [String: [EventHandlerSettings]] {
        let handlerRules = eventHandler.rules.filter(\.takesHandlerEvents)
        var hubs = Set(handlerRules.map { $0.hub.lowercased() })
        let wildcard = hubs.remove("*") != nil
        if wildcard || eventHandler.connect != nil, let hub = webpubsub.defaultHub { hubs.insert(hub.lowercased()) }
        let host = server.host == "0.0.0.0" || server.host == "::" ? "127.0.0.1" : server.host
        var url = "http://\(host):\(server.port)\(eventHandler.path)/{hub}"
        if let token = eventHandler.authToken { url += "?code=" + percentEncode(token) }
        var result: [String: [EventHandlerSettings]] = [:]
        for hub in hubs {
            let names = handlerRules.filter { $0.hub == "*" || $0.hub.lowercased() == hub }.reduce(into: Set<String>()) { $0.formUnion($1.events) }
                .filter { !$0.hasPrefix("group:") }
            var system = names.contains("*") ? Set(["connected", "disconnected"]) : names.intersection(["connected", "disconnected"])
            if eventHandler.connect != nil { system.insert("connect") }
            let user = names.contains("*") ? "*" : names.subtracting(["connected", "disconnected"]).sorted().joined(separator: ",")
            result[hub] = [EventHandlerSettings(urlTemplate: url, userEventPattern: user, systemEvents: system)]
        }
        return result
    }

    /// The adapters that can say why they are unhealthy, by name, for `/readyz`.
    var healthReporters: [(String, any HealthReporting)] {
        var result: [(String, any HealthReporting)] = []
        for s in core.sources { if let h = s.adapter as? any HealthReporting { result.append(("source \(s.name)", h)) } }
        if let h = core.deadLetter as? any HealthReporting { result.append(("deadLetter", h)) }
        if let h = leadership as? any HealthReporting { result.append(("coordination", h)) }
        for r in core.routes { if let h = r.deadLetter as? any HealthReporting { result.append(("route \(r.name) deadLetter", h)) } }
        for rule in eventHandler?.rules ?? [] {
            if let h = rule.sink as? any HealthReporting { result.append(("events \(rule.sink.description)", h)) }
        }
        return result
    }

    /// A human summary for `validate`.
    package var summary: String {
        var lines: [String] = []
        if let cs = webpubsub.connectionString {
            lines.append("Web PubSub: \(cs.endpoint)" + (webpubsub.defaultHub.map { " (default hub \($0))" } ?? ""))
        }
        if let entra = webpubsub.entra {
            lines.append(
                "Web PubSub: \(entra.endpoint) with Entra ID (\(entra.credential))" + (webpubsub.defaultHub.map { " (default hub \($0))" } ?? ""))
        }
        if let e = webpubsub.embedded {
            lines.append("Web PubSub: embedded hub on http://\(e.host):\(e.port)" + (webpubsub.defaultHub.map { " (default hub \($0))" } ?? ""))
        }
        lines.append("Sources (\(core.sources.count)):")
        for s in core.sources { lines.append("  \(s.name): \(s.type)" + (s.leaderOnly ? " (replicas: many, forwarded by the leader)" : "")) }
        if let leadership { lines.append("Coordination: \(leadership.description)") }
        lines.append("Routes (\(core.routes.count)):")
        for r in core.routes {
            let condition = r.condition.map { " where \($0.filter.text)" } ?? ""
            lines.append(
                "  \(r.name): from \(r.source)\(condition)" + (r.ordering == .none ? " (unordered)" : r.ordering == .key ? " (ordered per key)" : ""))
            for t in r.targets { lines.append("    -> \(t.description)") }
            if let b = r.batch {
                lines.append(
                    "    batched: up to \(b.maxMessages) messages, \(b.maxBytes / 1024) KB, waiting \(Int(b.maxDelay / .milliseconds(1))) ms"
                        + (r.conflate.map { "; conflated by \($0.text)" } ?? "") + " (one JSON array per send)")
            }
            if let d = r.deadLetter { lines.append("    dead letters: \(d.description)") }
        }
        lines.append("Dead letters: \(core.deadLetter?.description ?? "none (logged and dropped)")")
        if let server { lines.append("Server: http://\(server.host):\(server.port) (/healthz, /readyz)") }
        if let e = eventHandler {
            lines.append("Event handler: \(e.path)/{hub}" + (e.connect != nil ? " (connect policy)" : ""))
            for rule in e.rules {
                lines.append("  hub \(rule.hub), events \(rule.events.sorted().joined(separator: ",")) -> \(rule.sink.description)")
            }
        }
        let d = core.delivery
        lines.append(
            "Delivery: \(d.concurrency) concurrent sends, \(d.maxInFlight) in flight, \(d.retry.maxAttempts) attempts, shutdown timeout \(d.shutdownTimeout)"
        )
        return lines.joined(separator: "\n")
    }
}

/// 44 random base64 characters, like the service's keys.
