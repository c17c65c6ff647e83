package import BridgeConfig
import ODataFilter
import WebPubSubProtocol

/// How long to wait before retry `attempt` (1-based): exponential backoff with full jitter,
/// or what the service asked for with `Retry-After`.
package struct RetryPolicy: Sendable, Equatable {
    /// Attempts in all, the first send included; after the last one the message is dead-lettered.
    package var maxAttempts: Int = 10
    package var initialBackoff: Duration = .milliseconds(200)
    package var maxBackoff: Duration = .seconds(30)

    package init() {}

    package init(maxAttempts: Int, initialBackoff: Duration, maxBackoff: Duration) {
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
    }

    /// The ceiling of the jittered delay before retry `attempt` (1-based).
    package func backoffCeiling(attempt: Int) -> Duration {
        let exponent = min(max(attempt - 1, 0), 30)
        let ceiling = initialBackoff * (1 << exponent)
        return min(ceiling, maxBackoff)
    }

    /// The longest `Retry-After` honoured, so that a wrong header cannot stall a lane for hours.
    package static let maxRetryAfter: Duration = .seconds(300)

    /// The delay before retry `attempt`. A `Retry-After` from the service wins (up to
    /// ``maxRetryAfter``): the service knows when it will take more.
    /// - Parameter throttled: the answer was 429. Its `retry-after-ms` can be a millisecond (a
    ///   token bucket's next token), which would use up the attempts at once while many sends
    ///   compete for the tokens: then no sooner than the backoff either.
    package func delay(
        attempt: Int, retryAfter: Duration?, throttled: Bool = false, random: (Double) -> Double = { Double.random(in: 0...$0) }
    ) -> Duration {
        let backoff = Duration.milliseconds(Int64(random(backoffCeiling(attempt: attempt) / .milliseconds(1))))
        guard let retryAfter else { return backoff }
        let asked = min(retryAfter, Self.maxRetryAfter)
        return throttled ? max(asked, backoff) : asked
    }
}

/// Dispatcher settings (`delivery:` in `bridge.yaml`).
package struct DeliverySettings: Sendable, Equatable {
    /// Messages held between the sources and Web PubSub; sources wait when it is reached.
    package var maxInFlight: Int = 1024
    /// REST requests under way at once.
    package var concurrency: Int = 64
    package var retry = RetryPolicy()
    /// How long shutdown waits for in-flight sends before giving them up (unacknowledged).
    package var shutdownTimeout: Duration = .seconds(30)

    package init() {}
}

/// A configured source.
package struct SourceEntry: Sendable {
    package var name: String
    package var type: String
    package var adapter: any SourceAdapter
    /// Its settings as written, to tell on a reload whether it changed.
    package var fingerprint: String = ""
    /// `replicas: many` of a source every replica hears: only the leader forwards it.
    package var leaderOnly = false
}

/// The parts of `bridge.yaml` that the core owns: sources, routes, dead letters, delivery.
package struct CoreConfig: Sendable {
    package var sources: [SourceEntry] = []
    package var routes: [Route] = []
    package var deadLetter: (any SinkAdapter)?
    package var delivery = DeliverySettings()

    package init() {}

    /// The top-level keys read here.
    package static let keys = ["sources", "routes", "deadLetter", "delivery"]

    /// Reads the core sections of `root`; problems are reported to `root.reader`.
    /// - Parameters:
    ///   - requireSources: false when the bridge has other work (mirroring client events).
    ///   - warnUnread: warn about sources no route reads; false when the caller knows of other
    ///     readers and calls ``warnUnreadSources(_:readElsewhere:)`` itself.
    /// `replicas: one | many`; true when the source must run on the leader only. A source that
    /// every replica hears needs `coordination` for `many`; stdin is each process's own.
    static func readReplicas(_ m: ConfigMapping, name: String, type: String, mode: ReplicaMode, root: ConfigMapping) -> Bool {
        guard let value = m.value("replicas"), let text = m.nonEmptyString("replicas") else { return false }
        guard let replicas = Replicas(rawValue: text) else {
            value.report("replicas must be 'one' (this process is the only one) or 'many' (several replicas run this config), not '\(text)'")
            return false
        }
        guard replicas == .many else { return false }
        switch mode {
        case .consumerGroup:
            return false
        case .processLocal:
            value.report("'replicas: many' does not apply to a \(type) source: each process reads its own input")
            return false
        case .everyReplica:
            if !root.has("coordination") {
                value.report(
                    "every replica hears all of source '\(name)' (\(type)): with 'replicas: many' it needs a top-level 'coordination' "
                        + "(redis: {url: ...} or kafka: {brokers: ...}) so that one replica at a time forwards it")
            }
            return true
        }
    }

    package static func read(
        _ root: ConfigMapping, registry: AdapterRegistry, context: AdapterContext, defaultHub: String?, requireSources: Bool = true,
        warnUnread: Bool = true
    ) -> CoreConfig {
        var config = CoreConfig()
        var sourceTypes: [String: any SourceFactory] = [:]
        var sourceNames: Set<String> = []
        /// Sources whose messages are binary (`dataType: binary`): a batch cannot carry them.
        var binarySources: Set<String> = []

        if let items = root.list("sources", required: requireSources) {
            if items.isEmpty && requireSources { root.value("sources")?.report("at least one source is needed") }
            for item in items {
                guard let m = item.mapping() else { continue }
                let name = m.nonEmptyString("name", required: true)
                let type = m.nonEmptyString("type", required: true)
                if let name, !sourceNames.insert(name).inserted {
                    m.value("name")?.report("duplicate source name '\(name)'")
                }
                guard let type else { continue }
                guard let factory = registry.sources[type] else {
                    let known = registry.sources.keys.sorted().joined(separator: ", ")
                    m.value("type")?.report("unknown source type '\(type)'; known types: \(known)")
                    continue
                }
                let settings = m.without(["name", "type", "replicas"])
                guard let name else { continue }
                let leaderOnly = readReplicas(m, name: name, type: type, mode: factory.replicaMode, root: root)
                if let v = m.value("dataType"), v.isScalar, v.string() == DataType.binary.rawValue { binarySources.insert(name) }
                sourceTypes[name] = factory
                if let adapter = factory.makeSource(name: name, settings: settings, context: context) {
                    config.sources.append(
                        SourceEntry(name: name, type: type, adapter: adapter, fingerprint: item.fingerprint, leaderOnly: leaderOnly))
                }
            }
        }

        if let m = root.mapping("deadLetter") {
            config.deadLetter = readSink(m, registry: registry, context: context)
        }

        if let m = root.mapping("delivery") {
            m.checkKeys(["maxInFlight", "concurrency", "retry", "shutdownTimeout"], what: "delivery")
            config.delivery.maxInFlight = m.int("maxInFlight", range: 1...1_000_000) ?? config.delivery.maxInFlight
            config.delivery.concurrency = m.int("concurrency", range: 1...10_000) ?? config.delivery.concurrency
            config.delivery.shutdownTimeout = m.duration("shutdownTimeout") ?? config.delivery.shutdownTimeout
            if let r = m.mapping("retry") {
                r.checkKeys(["maxAttempts", "initialBackoff", "maxBackoff"], what: "retry")
                config.delivery.retry.maxAttempts = r.int("maxAttempts", range: 1...1000) ?? config.delivery.retry.maxAttempts
                config.delivery.retry.initialBackoff = r.duration("initialBackoff") ?? config.delivery.retry.initialBackoff
                config.delivery.retry.maxBackoff = r.duration("maxBackoff") ?? config.delivery.retry.maxBackoff
            }
        }

        if let items = root.list("routes", required: requireSources) {
            if items.isEmpty && requireSources { root.value("routes")?.report("at least one route is needed") }
            var names: Set<String> = []
            for (index, item) in items.enumerated() {
                guard let m = item.mapping() else { continue }
                if let route = readRoute(
                    m, index: index, sourceNames: sourceNames, sourceTypes: sourceTypes, binarySources: binarySources, registry: registry,
                    context: context, defaultHub: defaultHub)
                {
                    if !names.insert(route.name).inserted { m.value("name")?.report("duplicate route name '\(route.name)'") }
                    if route.deadLetter == nil, config.deadLetter == nil, let factory = sourceTypes[route.source], factory.isAtLeastOnce {
                        m.report(
                            "route '\(route.name)' reads '\(route.source)' (\(factory.typeName), at least once) but has no deadLetter sink: "
                                + "a message that cannot be delivered would be dropped and acknowledged. Add deadLetter: {type: file, path: ...} "
                                + "(here or at the top level), or deadLetter: {type: drop} to drop such messages on purpose")
                    }
                    if let batch = route.batch, batch.maxMessages > config.delivery.maxInFlight {
                        m.value("batch")?.warn(
                            "batch.maxMessages (\(batch.maxMessages)) is above delivery.maxInFlight (\(config.delivery.maxInFlight)): "
                                + "batches never fill and go after maxDelay; raise delivery.maxInFlight")
                    }
                    config.routes.append(route)
                }
            }
        }
        if warnUnread { config.warnUnreadSources(root) }
        return config
    }

    /// Warns about each source that no route reads and that is not in `readElsewhere`.
    package func warnUnreadSources(_ root: ConfigMapping, readElsewhere: Set<String> = []) {
        for source in sources where !routes.contains(where: { $0.source == source.name }) && !readElsewhere.contains(source.name) {
            let message = "source '\(source.name)' is not read by any route: its messages are acknowledged and dropped"
            if let sources = root.value("sources") { sources.warn(message) } else { root.reader.warn(message, path: "sources") }
        }
    }

    /// Reads a sink mapping (`{type: file, path: ...}`).
    package static func readSink(_ m: ConfigMapping, registry: AdapterRegistry, context: AdapterContext) -> (any SinkAdapter)? {
        guard let type = m.nonEmptyString("type", required: true) else { return nil }
        guard let factory = registry.sinks[type] else {
            let known = registry.sinks.keys.sorted().joined(separator: ", ")
            m.value("type")?.report("unknown sink type '\(type)'; known types: \(known)")
            return nil
        }
        let settings = m.without(["type"])
        return factory.makeSink(settings: settings, context: context)
    }

    static func readRoute(
        _ m: ConfigMapping, index: Int, sourceNames: Set<String>, sourceTypes: [String: any SourceFactory], binarySources: Set<String> = [],
        registry: AdapterRegistry, context: AdapterContext, defaultHub: String?
    ) -> Route? {
        m.checkKeys(["name", "from", "where", "to", "ordering", "deadLetter", "forwardMirrored", "batch", "conflate"], what: "a route")
        let from = m.nonEmptyString("from", required: true)
        let factory = from.flatMap { sourceTypes[$0] }
        if let from, !sourceNames.contains(from), let v = m.value("from") {
            let known = sourceNames.sorted()
            v.report("route reads from '\(from)', which is not a source" + (known.isEmpty ? "" : "; sources: \(known.joined(separator: ", "))"))
        }
        var usedFields: [(MessageField, ConfigValue)] = []
        var condition: RouteCondition?
        if let v = m.value("where"), let text = v.string() {
            do {
                condition = try RouteCondition(text)
                usedFields += condition!.referencedFields.map { ($0, v) }
            } catch {
                v.report(error.message)
            }
        }
        let ordering = m.enumeration("ordering", Ordering.self) ?? .strict
        var deadLetter: (any SinkAdapter)?
        if let d = m.mapping("deadLetter") {
            deadLetter = readSink(d, registry: registry, context: context)
        }
        var targets: [TargetSpec] = []
        if let items = m.list("to", required: true, allowSingle: false) {
            if items.isEmpty { m.value("to")?.report("a route needs at least one target") }
            for item in items {
                guard let t = item.mapping() else { continue }
                if let target = readTarget(t, defaultHub: defaultHub) {
                    targets.append(target)
                    for template in target.templates {
                        usedFields += template.fields.map { ($0, item) }
                    }
                }
            }
        }
        if let factory, let from {
            for (field, where_) in usedFields {
                if let origin = field.originField, !factory.originFields.contains(origin) {
                    where_.report("{\(field)} is never set: source '\(from)' (type \(factory.typeName)) has no \(origin)")
                }
            }
        }
        guard let from, factory != nil, !targets.isEmpty else { return nil }
        let name = m.nonEmptyString("name") ?? "\(from)#\(index)"
        var route = Route(name: name, source: from, condition: condition, targets: targets, ordering: ordering, deadLetter: deadLetter)
        route.forwardMirrored = m.bool("forwardMirrored") ?? false
        route.batch = readBatch(m, from: from, binarySources: binarySources, targets: targets)
        if let c = m.mapping("conflate") {
            c.checkKeys(["key"], what: "conflate")
            if let key = c.template("key", required: true) {
                if route.batch == nil {
                    m.value("conflate")?.report("conflate works within a batch: add batch: {maxDelay: 10ms} (or other limits) to the route")
                } else if key.isConstant {
                    c.value("key")?.report(
                        "conflate.key '\(key.text)' is the same for every message; use a field, e.g. \"{json.symbol}\" or \"{key}\"")
                } else {
                    route.conflate = key
                }
            }
        }
        return route
    }

    /// A route's `batch:`; binary payloads cannot be carried in a batch's JSON array.
    static func readBatch(_ m: ConfigMapping, from: String, binarySources: Set<String>, targets: [TargetSpec]) -> BatchSettings? {
        guard let b = m.mapping("batch") else { return nil }
        b.checkKeys(["maxMessages", "maxBytes", "maxDelay"], what: "batch")
        var batch = BatchSettings.defaults
        batch.maxMessages = b.int("maxMessages", range: 1...10_000) ?? batch.maxMessages
        batch.maxBytes = b.byteSize("maxBytes", range: 1024...BatchSettings.maxBytesLimit) ?? batch.maxBytes
        if let delay = b.duration("maxDelay") {
            if delay > .seconds(1) {
                b.value("maxDelay")?.report("maxDelay \(delay) is above 1s: a message would wait that long for company; use at most 1s")
            } else {
                batch.maxDelay = delay
            }
        }
        if binarySources.contains(from) {
            m.value("batch")?.report(
                "source '\(from)' reads binary messages (dataType: binary); a batch is a JSON array of JSON and text messages. "
                    + "Remove batch:, or read the source as text or json")
            return nil
        }
        if targets.contains(where: { $0.dataType == .binary }) {
            m.value("batch")?.report(
                "a target of this route sends binary (dataType: binary); a batch is a JSON array of JSON and text messages. "
                    + "Remove batch:, or the target's dataType")
            return nil
        }
        return batch
    }

    static let targetFilterIdentifiers: Set<String> = ["userid", "connectionid", "groups"]

    static func readTarget(_ t: ConfigMapping, defaultHub: String?) -> TargetSpec? {
        t.checkKeys(["hub", "all", "group", "user", "connection", "filter", "excluded", "dataType", "ttl", "metadata"], what: "a target")
        var ok = true
        var hub: Template?
        if t.has("hub") {
            hub = t.template("hub")
            if let hub, hub.isConstant, let problem = WebPubSubNames.hubProblem(hub.text) {
                t.value("hub")?.report(problem)
                ok = false
            }
            if hub == nil { ok = false }
        } else if let defaultHub {
            hub = Template(literal: defaultHub)
        } else {
            t.report("target has no 'hub' and webpubsub.hub sets no default")
            ok = false
        }
        let kinds = ["all", "group", "user", "connection"].filter { t.has($0) }
        var recipient: TargetSpec.RecipientSpec?
        if kinds.count != 1 {
            t.report(
                kinds.isEmpty
                    ? "target needs one of 'all: true', 'group', 'user' or 'connection'"
                    : "target has \(kinds.joined(separator: " and ")); give exactly one of all, group, user, connection")
            ok = false
        } else {
            switch kinds[0] {
            case "all":
                if let all = t.bool("all") {
                    if all { recipient = .all } else { t.value("all")?.report("'all' must be true (or name a group, user or connection instead)") }
                }
            case "group":
                if let g = t.template("group") {
                    if g.isConstant, let problem = WebPubSubNames.groupProblem(g.text) {
                        t.value("group")?.report(problem)
                    } else {
                        recipient = .group(g)
                    }
                }
            case "user":
                if let u = t.template("user") {
                    if u.text.isEmpty { t.value("user")?.report("user id is empty") } else { recipient = .user(u) }
                }
            default:
                if let c = t.template("connection") {
                    if c.text.isEmpty { t.value("connection")?.report("connection id is empty") } else { recipient = .connection(c) }
                }
            }
        }
        var filter: Template?
        if let v = t.value("filter"), let text = v.string() {
            do {
                let template = try Template(text)
                // Check the filter's syntax with every placeholder standing for a plain value.
                let sample = Filter.sample(template)
                let parsed = try Filter(sample)
                for name in parsed.identifiers where !targetFilterIdentifiers.contains(name.lowercased()) {
                    v.report("unknown field '\(name)' in filter; Web PubSub filters read userId, connectionId and groups")
                }
                if case .connection = recipient { v.report("'filter' does not apply to a single connection") }
                filter = template
            } catch let error as TemplateSyntaxError {
                v.report(error.message)
            } catch {
                v.report("invalid filter '\(text)': \(error)")
            }
        }
        var excluded: [Template] = []
        if let items = t.list("excluded", allowSingle: true) {
            for item in items {
                guard let s = item.string() else { continue }
                do { excluded.append(try Template(s)) } catch { item.report(error.message) }
            }
            if case .user = recipient { t.value("excluded")?.report("'excluded' does not apply to a user target") }
            if case .connection = recipient { t.value("excluded")?.report("'excluded' does not apply to a connection target") }
        }
        let dataType = t.enumeration("dataType", DataType.self)
        let ttl = t.int("ttl", range: 0...300)
        var metadata: [(key: String, value: Template)] = []
        if let m = t.mapping("metadata") {
            for key in m.keys {
                if let problem = MessageMetadata.keyProblem(key) {
                    m.value(key)?.report(problem)
                    continue
                }
                guard let value = m.template(key) else { continue }
                if value.isConstant, let problem = MessageMetadata.valueProblem(value.text) { m.value(key)?.report(problem) }
                metadata.append((key.lowercased(), value))
            }
            if Set(metadata.map(\.key)).count != metadata.count { m.report("metadata keys differ only in case; they are one key") }
        }
        guard ok, let hub, let recipient else { return nil }
        return TargetSpec(
            hub: hub, recipient: recipient, filter: filter, excluded: excluded, dataType: dataType, messageTTLSeconds: ttl, metadata: metadata)
    }
}

extension Filter {
    /// The template's text with each placeholder replaced by `x`, for a syntax check.
    static func sample(_ template: Template) -> String {
        template.parts.map { part in
            switch part {
            case .literal(let s): s
            case .field: "x"
            }
        }.joined()
    }
}

extension ConfigMapping {
    /// A template; syntax problems are reported.
    package func template(_ key: String, required: Bool = false) -> Template? {
        guard let v = required ? requireKey(key) : value(key), let s = v.string() else { return nil }
        do {
            return try Template(s)
        } catch {
            v.report(error.message)
            return nil
        }
    }
}
