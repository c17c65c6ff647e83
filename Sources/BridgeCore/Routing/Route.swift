public import ODataFilter

/// Who receives a message within a hub.
public enum Recipient: Sendable, Hashable {
    case all
    case group(String)
    case user(String)
    case connection(String)
}

/// A target with every template rendered: what one REST send goes to.
public struct ResolvedTarget: Sendable, Hashable, CustomStringConvertible {
    public var hub: String
    public var recipient: Recipient
    public var filter: String?
    public var excluded: [String]
    /// Overrides the message's data type when set.
    public var dataType: DataType?
    public var messageTTLSeconds: Int?

    public init(
        hub: String, recipient: Recipient, filter: String? = nil, excluded: [String] = [], dataType: DataType? = nil,
        messageTTLSeconds: Int? = nil
    ) {
        self.hub = hub
        self.recipient = recipient
        self.filter = filter
        self.excluded = excluded
        self.dataType = dataType
        self.messageTTLSeconds = messageTTLSeconds
    }

    public var description: String {
        var s = "hub \(hub) "
        switch recipient {
        case .all: s += "all"
        case .group(let g): s += "group \(g)"
        case .user(let u): s += "user \(u)"
        case .connection(let c): s += "connection \(c)"
        }
        if let filter { s += " filter \(filter)" }
        if !excluded.isEmpty { s += " excluding \(excluded.joined(separator: ","))" }
        return s
    }
}

/// Names that Web PubSub accepts, checked before a request is made.
public enum WebPubSubNames {
    /// `^[A-Za-z][A-Za-z0-9_`,.[\]]{0,127}$`
    public static func hubProblem(_ hub: String) -> String? {
        guard let first = hub.unicodeScalars.first else { return "hub name is empty" }
        guard hub.unicodeScalars.count <= 128 else { return "hub name '\(hub)' is longer than 128 characters" }
        guard ("a"..."z").contains(first) || ("A"..."Z").contains(first) else { return "hub name '\(hub)' must start with a letter" }
        for c in hub.unicodeScalars {
            let ok = ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || "_`,.[]".unicodeScalars.contains(c)
            if !ok { return "hub name '\(hub)' may only contain letters, digits and _ ` , . [ ]" }
        }
        return nil
    }

    /// Not empty, not only white space, not `.` or `..` (a path would lose its segment), at most
    /// 1,024 characters.
    public static func groupProblem(_ group: String) -> String? {
        if group.count > 1024 { return "group name is longer than 1024 characters" }
        return nameProblem(group, kind: "group name")
    }

    /// Not empty, not only white space, not `.` or `..`.
    public static func userProblem(_ user: String) -> String? { nameProblem(user, kind: "user id") }

    /// Not empty, not only white space, not `.` or `..`.
    public static func connectionProblem(_ connection: String) -> String? { nameProblem(connection, kind: "connection id") }

    /// A client event's name: `^[a-z][a-z0-9_.-]{0,127}$`, case-insensitive (it becomes the
    /// `ce-eventName` header and a URL segment upstream).
    public static func eventProblem(_ name: String) -> String? {
        let scalars = Array(name.unicodeScalars)
        guard let first = scalars.first else { return "event name is empty" }
        guard scalars.count <= 128 else { return "event name is longer than 128 characters" }
        func isLetter(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
        guard isLetter(first) else { return "event name must start with a letter" }
        for c in scalars where !(isLetter(c) || ("0"..."9").contains(c) || "_.-".unicodeScalars.contains(c)) {
            return "event name may only contain letters, digits and _ . -"
        }
        return nil
    }

    static func nameProblem(_ name: String, kind: String) -> String? {
        if name.isEmpty { return "\(kind) is empty" }
        if name.allSatisfy(\.isWhitespace) { return "\(kind) is only white space" }
        if name == "." || name == ".." { return "\(kind) '\(name)' is not allowed (a URL path would drop it)" }
        return nil
    }
}

/// A target as configured: templates over the message.
public struct TargetSpec: Sendable {
    public enum RecipientSpec: Sendable {
        case all
        case group(Template)
        case user(Template)
        case connection(Template)
    }

    public var hub: Template
    public var recipient: RecipientSpec
    public var filter: Template?
    public var excluded: [Template]
    public var dataType: DataType?
    public var messageTTLSeconds: Int?

    public init(
        hub: Template, recipient: RecipientSpec, filter: Template? = nil, excluded: [Template] = [], dataType: DataType? = nil,
        messageTTLSeconds: Int? = nil
    ) {
        self.hub = hub
        self.recipient = recipient
        self.filter = filter
        self.excluded = excluded
        self.dataType = dataType
        self.messageTTLSeconds = messageTTLSeconds
    }

    var templates: [Template] {
        var all = [hub] + excluded
        switch recipient {
        case .all: break
        case .group(let t), .user(let t), .connection(let t): all.append(t)
        }
        if let filter { all.append(filter) }
        return all
    }

    /// Renders every template for `context`.
    /// - Throws: ``TargetResolutionError`` when a template cannot be rendered or yields an invalid name.
    public func resolve(_ context: MessageContext) throws(TargetResolutionError) -> ResolvedTarget {
        do {
            let hub = try self.hub.render(context)
            if let problem = WebPubSubNames.hubProblem(hub) { throw TargetResolutionError(message: problem) }
            let recipient: Recipient
            switch self.recipient {
            case .all:
                recipient = .all
            case .group(let t):
                let group = try t.render(context)
                if let problem = WebPubSubNames.groupProblem(group) { throw TargetResolutionError(message: problem) }
                recipient = .group(group)
            case .user(let t):
                let user = try t.render(context)
                if let problem = WebPubSubNames.userProblem(user) { throw TargetResolutionError(message: problem) }
                recipient = .user(user)
            case .connection(let t):
                let connection = try t.render(context)
                if let problem = WebPubSubNames.connectionProblem(connection) { throw TargetResolutionError(message: problem) }
                recipient = .connection(connection)
            }
            // Values substituted into a filter are string-literal content: double the quotes.
            let filter = try self.filter?.render(context) { $0.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "''") }
            let excluded = try self.excluded.map { template throws(TemplateResolutionError) in try template.render(context) }.filter { !$0.isEmpty }
            return ResolvedTarget(
                hub: hub, recipient: recipient, filter: filter, excluded: excluded, dataType: dataType,
                messageTTLSeconds: messageTTLSeconds)
        } catch let error as TemplateResolutionError {
            throw TargetResolutionError(message: error.description)
        } catch let error as TargetResolutionError {
            throw error
        } catch {
            throw TargetResolutionError(message: "\(error)")
        }
    }

    /// `hub chat group room-{key}`, for logs.
    public var description: String {
        var s = "hub \(hub.text) "
        switch recipient {
        case .all: s += "all"
        case .group(let t): s += "group \(t.text)"
        case .user(let t): s += "user \(t.text)"
        case .connection(let t): s += "connection \(t.text)"
        }
        return s
    }
}

public struct TargetResolutionError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// A route's `where`: an OData filter over message fields (`json.type eq 'order'`).
public struct RouteCondition: Sendable {
    public let filter: Filter
    let fields: [String: MessageField]

    /// - Throws: a message naming the problem.
    public init(_ text: String) throws(TemplateSyntaxError) {
        let filter: Filter
        do {
            filter = try Filter(text)
        } catch {
            throw TemplateSyntaxError(message: "invalid condition '\(text)': \(error)")
        }
        var fields: [String: MessageField] = [:]
        for name in filter.identifiers {
            guard let field = MessageField(name: name) else {
                throw TemplateSyntaxError(message: "unknown field '\(name)' in condition '\(text)'; known: \(MessageField.names)")
            }
            fields[name] = field
        }
        self.filter = filter
        self.fields = fields
    }

    public var referencedFields: [MessageField] { Array(fields.values) }

    public func matches(_ context: MessageContext) -> Bool {
        filter.matches { name in
            guard let field = fields[name] else { return .null }
            return context.filterValue(for: field)
        }
    }
}

/// Whether a lane's sends may overlap.
public enum Ordering: String, Sendable, CaseIterable {
    /// Messages of one lane reach one target in the order they were read.
    case strict
    /// Messages with the same key reach one target in the order they were read; different keys
    /// overlap (a lane per key rather than per partition: Kafka keeps a key in one partition, so
    /// a key's order is kept, while a partition's order across keys is not). Messages without a
    /// key keep the `strict` lane.
    case key
    /// Sends overlap freely.
    case none
}

/// Messages `from` a source, optionally filtered, to one or more targets.
public struct Route: Sendable {
    public var name: String
    public var source: String
    public var condition: RouteCondition?
    public var targets: [TargetSpec]
    public var ordering: Ordering
    /// Where permanent failures of this route go; the global dead-letter sink when nil.
    public var deadLetter: (any SinkAdapter)?
    /// Whether client events mirrored from a hub (header `wps-mirrored-from`) may be sent back
    /// to that same hub. Off by default, so that chat mirrored into Kafka and routed from Kafka
    /// to the hub does not echo forever.
    public var forwardMirrored = false

    public init(
        name: String, source: String, condition: RouteCondition? = nil, targets: [TargetSpec], ordering: Ordering = .strict,
        deadLetter: (any SinkAdapter)? = nil
    ) {
        self.name = name
        self.source = source
        self.condition = condition
        self.targets = targets
        self.ordering = ordering
        self.deadLetter = deadLetter
    }
}
