package import BridgeJSON
import Yams

extension ConfigValue {
    /// The value as JSON: mappings become objects (keys must be plain scalars), sequences arrays,
    /// and scalars what YAML resolves them to (`true`, `42`, `1.5`, `null`; quoted ones stay strings).
    /// Reports what cannot be JSON (a non-finite number, a key that is a mapping) and returns nil.
    package func json() -> JSONValue? {
        switch node {
        case .scalar(let scalar):
            switch Tag.Name(rawValue: node.tag.rawValue) {
            case .null: return .null
            case .bool: return node.bool.map(JSONValue.bool)
            case .int:
                guard let n = node.int else {
                    report("'\(scalar.string)' is too large a number; quote it to keep it as text")
                    return nil
                }
                return .number(String(n))
            case .float:
                guard let d = node.float, d.isFinite else {
                    report("'\(scalar.string)' is not a number JSON can hold")
                    return nil
                }
                return .number(String(d))
            default: return .string(scalar.string)
            }
        case .mapping:
            guard let m = mapping() else { return nil }
            var members: [(String, JSONValue)] = []
            var ok = true
            for (key, _, _) in m.pairs {
                guard let value = m.value(key)?.json() else {
                    ok = false
                    continue
                }
                members.append((key, value))
            }
            return ok ? .object(members) : nil
        case .sequence:
            let items = (sequence() ?? []).map { $0.json() }
            return items.contains { $0 == nil } ? nil : .array(items.compactMap { $0 })
        case .alias:
            report("YAML aliases are not supported here")
            return nil
        }
    }
}
