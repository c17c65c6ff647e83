/// A JSON value that keeps numbers as they were written and objects in their order.
///
/// The bridge reads JSON on its hot path (NDJSON lines, `{json.a.b}` templates, route conditions)
/// and must forward payloads byte for byte, so it has its own small parser instead of
/// `JSONSerialization`, which turns `1.0` into `1` and cannot tell `true` from `1` on Linux.
package enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// The number's text as written (`12`, `-0.5e3`).
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    package static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.number(let a), .number(let b)): return a == b || (Double(a) != nil && Double(a) == Double(b))
        case (.string(let a), .string(let b)): return a == b
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    package func hash(into hasher: inout Hasher) {
        switch self {
        case .null: hasher.combine(0)
        case .bool(let b): hasher.combine(b)
        case .number(let n): hasher.combine(Double(n) ?? 0)
        case .string(let s): hasher.combine(s)
        case .array(let a): hasher.combine(a)
        case .object(let o):
            for (k, v) in o {
                hasher.combine(k)
                hasher.combine(v)
            }
        }
    }

    /// The member `key` of an object (the first, if repeated).
    package subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    /// Follows a path of member names and array indices (`["items", "0", "id"]`).
    package func value(at path: some Sequence<String>) -> JSONValue? {
        var current = self
        for component in path {
            switch current {
            case .object:
                guard let next = current[component] else { return nil }
                current = next
            case .array(let items):
                guard let index = Int(component), items.indices.contains(index) else { return nil }
                current = items[index]
            default:
                return nil
            }
        }
        return current
    }

    /// The string of a `.string`, nil otherwise.
    package var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// Compact JSON text.
    package var serialized: String {
        var out = ""
        write(to: &out)
        return out
    }

    package func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += n
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, (k, v)) in members.enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(k, to: &out)
                out += ":"
                v.write(to: &out)
            }
            out += "}"
        }
    }

    /// Appends `s` as a JSON string literal.
    package static func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }

    /// `s` as a JSON string literal.
    package static func quoted(_ s: String) -> String {
        var out = ""
        writeString(s, to: &out)
        return out
    }

    /// Parses one JSON document.
    package init(parsing text: String) throws(JSONParseError) {
        self = try JSONValue.parse(Array(text.utf8))
    }

    /// Parses one JSON document from UTF-8 bytes.
    /// `json` (valid JSON text) without the white space between its tokens: the same bytes
    /// otherwise, numbers and string escapes as written. The result holds no line break (JSON
    /// strings cannot), so it fits on one NDJSON line.
    package static func removingWhitespace(_ json: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(json.count)
        var inString = false
        var escaped = false
        for byte in json {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                out.append(byte)
                continue
            }
            switch byte {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"):
                continue
            case UInt8(ascii: "\""):
                inString = true
            default:
                break
            }
            out.append(byte)
        }
        return out
    }

    package static func parse(_ bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        let array = Array(bytes)
        var parser = JSONParser(bytes: array)
        let value = try parser.parseDocument()
        return value
    }

    /// Parses a JSON object and returns each member with the byte range of its value in `bytes`,
    /// so that a member can be forwarded exactly as written.
    package static func parseObjectMembers(_ bytes: [UInt8]) throws(JSONParseError) -> [(key: String, value: JSONValue, range: Range<Int>)] {
        var parser = JSONParser(bytes: bytes)
        return try parser.parseTopLevelObjectMembers()
    }
}
