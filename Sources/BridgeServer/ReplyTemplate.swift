package import BridgeJSON

/// The fields a `reply:` template reads: `{event}`, `{userId}` (empty for an anonymous client),
/// `{connectionId}`, `{hub}` and `{id}` (the CloudEvents id).
package struct ReplyTemplate {
    package static let fields: Set<String> = ["event", "userId", "connectionId", "hub", "id"]

    let values: [String: String]

    /// Why `template` cannot be filled (an unknown field, an unclosed `{`), or nil.
    package static func problem(_ template: String) -> String? {
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            guard let close = rest[open...].firstIndex(of: "}") else { return "'\(template)' has an unclosed {" }
            let field = String(rest[rest.index(after: open)..<close])
            if !fields.contains(field) {
                return "{\(field)} is not known in a reply; use \(fields.sorted().map { "{\($0)}" }.joined(separator: ", "))"
            }
            rest = rest[rest.index(after: close)...]
        }
        return nil
    }

    /// Every string of `json` (keys too) whose template cannot be filled, with why.
    package static func problems(_ json: JSONValue) -> [String] {
        switch json {
        case .string(let s): problem(s).map { [$0] } ?? []
        case .array(let items): items.flatMap(problems)
        case .object(let members): members.flatMap { (problem($0.0).map { [$0] } ?? []) + problems($0.1) }
        default: []
        }
    }

    func render(_ template: String) -> String {
        var out = ""
        var rest = Substring(template)
        while let open = rest.firstIndex(of: "{"), let close = rest[open...].firstIndex(of: "}") {
            out += rest[..<open]
            out += values[String(rest[rest.index(after: open)..<close])] ?? ""
            rest = rest[rest.index(after: close)...]
        }
        return out + rest
    }

    /// The JSON with every string filled: values are strings, so a field never changes the shape.
    func render(_ json: JSONValue) -> JSONValue {
        switch json {
        case .string(let s): .string(render(s))
        case .array(let items): .array(items.map(render))
        case .object(let members): .object(members.map { (render($0.0), render($0.1)) })
        default: json
        }
    }
}
