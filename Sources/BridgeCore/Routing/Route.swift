package import ODataFilter
package import WebPubSubProtocol

/// Who receives a message within a hub.
package enum Recipient: Sendable, Hashable {
    case all
    case group(String)
    case user(String)
    case connection(String)
}

/// A target with every template rendered: what one REST send goes to.
package struct ResolvedTarget: Sendable, Hashable, CustomStringConvertible {
    package var hub: String
    package var recipient: Recipient
    package var filter: String?
    package var excluded: [String]
    /// Overrides the message's data type when set.
    package var dataType: DataType?
    package var messageTTLSeconds: Int?
    /// `X-WebPubSub-Metadata-*`: passed to JSON-subprotocol clients with the message.
    package var metadata: [MetadataEntry]

    package init(
        hub: String, recipient: Recipient, filter: String? = nil, excluded: [String] = [], dataType: DataType? = nil,
        messageTTLSeconds: Int? = nil, metadata: [MetadataEntry] = []
    ) {
        self.hub = hub
        self.recipient = recipient
        self.filter = filter
        self.excluded = excluded
        self.dataType = dataType
        self.messageTTLSeconds = messageTTLSeconds
        self.metadata = metadata
    }

    package var description: String {
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

/// A target as configured: templates over the message.
package struct TargetSpec: Sendable {
    package enum RecipientSpec: Sendable {
        case all
        case group(Template)
        case user(Template)
        case connection(Template)
    }

    package var hub: Template
    package var recipient: RecipientSpec
    package var filter: Template?
    package var excluded: [Template]
    package var dataType: DataType?
    package var messageTTLSeconds: Int?
    /// Metadata keys (checked) and the templates of their values.
    package var metadata: [(key: String, value: Template)]

    package init(
        hub: Template, recipient: RecipientSpec, filter: Template? = nil, excluded: [Template] = [], dataType: DataType? = nil,
        messageTTLSeconds: Int? = nil, metadata: [(key: String, value: Template)] = []
    ) {
        self.hub = hub
        self.recipient = recipient
        self.filter = filter
        self.excluded = excluded
        self.dataType = dataType
        self.messageTTLSeconds = messageTTLSeconds
        self.metadata = metadata
    }

    var templates: [Template] {
        var all = [hub] + excluded + metadata.map(\.value)
        switch recipient {
        case .all: break
        case .group(let t), .user(let t), .connection(let t): all.append(t)
        }
        if let filter { all.append(filter) }
        return all
    }

    /// Renders every template for `context`.
    /// - Throws: ``TargetResolutionError`` when a template cannot be rendered or yields an invalid name.
    package func resolve(_ context: MessageContext) throws(TargetResolutionError) -> ResolvedTarget {
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
            var pairs: [(String, String)] = []
            for (key, value) in metadata { pairs.append((key, try value.render(context))) }
            let metadata: [MetadataEntry]
            switch MessageMetadata.validated(pairs) {
            case .success(let entries): metadata = entries
            case .failure(let error): throw TargetResolutionError(message: error.description)
            }
            return ResolvedTarget(
                hub: hub, recipient: recipient, filter: filter, excluded: excluded, dataType: dataType,
                messageTTLSeconds: messageTTLSeconds, metadata: metadata)
        } catch let error as TemplateResolutionError {
            throw TargetResolutionError(message: error.description)
        } catch let error as TargetResolutionError {
            throw error
        } catch {
            throw TargetResolutionError(message: "\(error)")
        }
    }

    /// `hub chat group room-{key}`, for logs.
    package var description: String {
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

package struct TargetResolutionError: Error, Sendable, CustomStringConvertible {
    package let message: String
    package var description: String { message }
}

/// A route's `where`: an OData filter over message fields (`json.type eq 'order'`).
package struct RouteCondition: Sendable {
    package let filter: Filter
    let fields: [String: MessageField]

    /// - Throws: a message naming the problem.
    package init(_ text: String) throws(TemplateSyntaxError) {
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

    package var referencedFields: [MessageField] { Array(fields.values) }

    package func matches(_ context: MessageContext) -> Bool {
        filter.matches { name in
            guard let field = fields[name] else { return .null }
            return context.filterValue(for: field)
        }
    }
}

/// Whether a lane's sends may overlap.
package enum Ordering: String, Sendable, CaseIterable {
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
package struct Route: Sendable {
    package var name: String
    package var source: String
    package var condition: RouteCondition?
    package var targets: [TargetSpec]
    package var ordering: Ordering
    /// Where permanent failures of this route go; the global dead-letter sink when nil.
    package var deadLetter: (any SinkAdapter)?
    /// Whether client events mirrored from a hub (header `wps-mirrored-from`) may be sent back
    /// to that same hub. Off by default, so that chat mirrored into Kafka and routed from Kafka
    /// to the hub does not echo forever.
    package var forwardMirrored = false
    /// Many messages per send (`batch:`), nil for one per send.
    package var batch: BatchSettings?
    /// Within one batch only the newest message per rendered key is sent (`conflate.key`).
    package var conflate: Template?

    package init(
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
