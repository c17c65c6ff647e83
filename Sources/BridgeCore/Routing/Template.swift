/// A field of a message that templates and route conditions can read.
package enum MessageField: Sendable, Hashable, CustomStringConvertible {
    case key
    case source
    case topic
    case channel
    case pattern
    case stream
    case partition
    case position
    case dataType
    case header(String)
    case json([String])

    /// Parses `key`, `header.NAME`, `json.a.b` ...; nil for an unknown name.
    package init?(name: String) {
        if name.hasPrefix("header.") {
            let header = String(name.dropFirst("header.".count))
            guard !header.isEmpty else { return nil }
            self = .header(header)
            return
        }
        if name == "json" {
            self = .json([])
            return
        }
        if name.hasPrefix("json.") {
            let path = name.dropFirst("json.".count).split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            guard !path.contains(where: \.isEmpty) else { return nil }
            self = .json(path)
            return
        }
        switch name {
        case "key": self = .key
        case "source": self = .source
        case "topic": self = .topic
        case "channel": self = .channel
        case "pattern": self = .pattern
        case "stream": self = .stream
        case "partition": self = .partition
        case "offset", "position", "id": self = .position
        case "dataType": self = .dataType
        // Mirrored client events carry these as headers (see the event handler).
        case "userId", "connectionId", "hub", "event", "group": self = .header(name)
        default: return nil
        }
    }

    package var description: String {
        switch self {
        case .key: "key"
        case .source: "source"
        case .topic: "topic"
        case .channel: "channel"
        case .pattern: "pattern"
        case .stream: "stream"
        case .partition: "partition"
        case .position: "position"
        case .dataType: "dataType"
        case .header(let h): "header.\(h)"
        case .json(let path): path.isEmpty ? "json" : "json." + path.joined(separator: ".")
        }
    }

    /// The origin field this reads, if it is one that only some sources provide.
    package var originField: String? {
        switch self {
        case .topic: "topic"
        case .channel: "channel"
        case .pattern: "pattern"
        case .stream: "stream"
        case .partition: "partition"
        default: nil
        }
    }

    static let names =
        "key, header.NAME, json.PATH, source, topic, channel, pattern, stream, partition, offset, dataType, userId, connectionId, hub, event, group"
}

/// Why a template could not be rendered for a message.
package struct TemplateResolutionError: Error, Sendable, CustomStringConvertible {
    package let template: String
    package let field: MessageField
    package let reason: String
    package var description: String { "template '\(template)': {\(field)} \(reason)" }
}

/// Why a template did not parse.
package struct TemplateSyntaxError: Error, Sendable, CustomStringConvertible {
    package let message: String
    package var description: String { message }
}

/// A string with `{field}` placeholders, parsed once and rendered per message.
/// `{{` and `}}` stand for literal braces.
package struct Template: Sendable, Hashable, CustomStringConvertible {
    enum Part: Sendable, Hashable {
        case literal(String)
        case field(MessageField)
    }

    let parts: [Part]
    package let text: String

    package init(_ text: String) throws(TemplateSyntaxError) {
        self.text = text
        var parts: [Part] = []
        var literal = ""
        var chars = text[...]
        while let c = chars.first {
            chars = chars.dropFirst()
            if c == "{" {
                if chars.first == "{" {
                    literal.append("{")
                    chars = chars.dropFirst()
                    continue
                }
                guard let close = chars.firstIndex(of: "}") else {
                    throw TemplateSyntaxError(message: "unclosed '{' in '\(text)' (write '{{' for a literal brace)")
                }
                let name = String(chars[..<close]).trimmingWhitespace()
                chars = chars[chars.index(after: close)...]
                guard let field = MessageField(name: name) else {
                    throw TemplateSyntaxError(message: "unknown placeholder '{\(name)}' in '\(text)'; known: \(MessageField.names)")
                }
                if !literal.isEmpty {
                    parts.append(.literal(literal))
                    literal = ""
                }
                parts.append(.field(field))
            } else if c == "}" {
                if chars.first == "}" {
                    chars = chars.dropFirst()
                    literal.append("}")
                    continue
                }
                throw TemplateSyntaxError(message: "unmatched '}' in '\(text)' (write '}}' for a literal brace)")
            } else {
                literal.append(c)
            }
        }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        self.parts = parts
    }

    /// A template that is the literal text.
    package init(literal: String) {
        text = literal
        parts = literal.isEmpty ? [] : [.literal(literal)]
    }

    package var description: String { text }

    /// True when the template has no placeholders.
    package var isConstant: Bool { !parts.contains { if case .field = $0 { true } else { false } } }

    package var fields: [MessageField] {
        parts.compactMap { if case .field(let f) = $0 { f } else { nil } }
    }

    /// Renders the template; `escape` transforms each substituted value (for filters: double `'`).
    package func render(_ context: MessageContext, escape: ((String) -> String)? = nil) throws(TemplateResolutionError) -> String {
        if parts.count == 1, case .literal(let s) = parts[0] { return s }
        var out = ""
        for part in parts {
            switch part {
            case .literal(let s):
                out += s
            case .field(let field):
                let value: String
                do {
                    value = try context.string(for: field)
                } catch let reason {
                    throw TemplateResolutionError(template: text, field: field, reason: reason.message)
                }
                out += escape.map { $0(value) } ?? value
            }
        }
        return out
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let end = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars[start...end])
        return String(out)
    }
}
