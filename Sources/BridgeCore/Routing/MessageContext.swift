package import BridgeJSON
import NIOCore
import ODataFilter

struct FieldError: Error {
    let message: String
}

/// A message being routed, with its JSON payload parsed at most once.
package final class MessageContext {
    package let message: Message
    private var parsedJSON: Result<JSONValue, JSONParseError>?

    package init(_ message: Message) {
        self.message = message
    }

    /// The payload as JSON, parsed on first use.
    package func json() throws(JSONParseError) -> JSONValue {
        if let parsedJSON { return try parsedJSON.get() }
        let result: Result<JSONValue, JSONParseError>
        do {
            result = .success(try JSONValue.parse(message.payload.readableBytesView))
        } catch {
            result = .failure(error)
        }
        parsedJSON = result
        return try result.get()
    }

    func string(for field: MessageField) throws(FieldError) -> String {
        let origin = message.origin
        func require(_ value: String?, _ what: String) throws(FieldError) -> String {
            guard let value else { throw FieldError(message: "is not set: the message has no \(what)") }
            return value
        }
        switch field {
        case .key: return try require(message.key, "key")
        case .source: return origin.source
        case .topic: return try require(origin.topic, "topic")
        case .channel: return try require(origin.channel, "channel")
        case .pattern: return try require(origin.pattern, "pattern")
        case .stream: return try require(origin.stream, "stream")
        case .partition: return try require(origin.partition.map(String.init), "partition")
        case .position: return try require(origin.position, "position")
        case .dataType: return message.dataType.rawValue
        case .header(let name): return try require(header(name), "header '\(name)'")
        case .json(let path):
            let root: JSONValue
            do {
                root = try json()
            } catch {
                throw FieldError(message: "cannot be read: the payload is not JSON (\(error))")
            }
            guard let value = root.value(at: path) else {
                throw FieldError(message: "is not set: the payload has no such member")
            }
            switch value {
            case .string(let s): return s
            case .number(let n): return n
            case .bool(let b): return b ? "true" : "false"
            case .null: throw FieldError(message: "is null")
            case .array, .object: return value.serialized
            }
        }
    }

    /// Headers match case-insensitively, as in HTTP and Kafka tooling.
    func header(_ name: String) -> String? {
        if let exact = message.headers[name] { return exact }
        let lower = name.lowercased()
        return message.headers.first { $0.key.lowercased() == lower }?.value
    }

    /// The value of a field for a route condition; unset fields are `null`.
    func filterValue(for field: MessageField) -> FilterValue {
        switch field {
        case .partition:
            return message.origin.partition.map { .number(Double($0)) } ?? .null
        case .json(let path):
            guard let root = try? json(), let value = root.value(at: path) else { return .null }
            switch value {
            case .null: return .null
            case .bool(let b): return .bool(b)
            case .number(let n): return Double(n).map { .number($0) } ?? .string(n)
            case .string(let s): return .string(s)
            case .array(let items):
                let strings = items.compactMap(\.stringValue)
                return strings.count == items.count ? .collection(strings) : .string(value.serialized)
            case .object: return .string(value.serialized)
            }
        default:
            guard let s = try? string(for: field) else { return .null }
            return .string(s)
        }
    }
}
