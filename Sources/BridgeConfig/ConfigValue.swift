import Foundation
import Yams

/// A YAML node with its path, read through the reader that collects problems.
package struct ConfigValue {
    let node: Node
    package let path: String
    package let reader: ConfigReader

    var mark: Mark? { node.mark }

    /// The node as YAML text, without positions, and what the files it names under `...File`
    /// keys hold (hashed): equal for equal settings, different when a secret file was rotated.
    package var fingerprint: String {
        var text = (try? Yams.serialize(node: node)) ?? ""
        var hasher = Hasher()
        var files = false
        func visit(_ node: Node) {
            switch node {
            case .mapping(let mapping):
                for (key, value) in mapping {
                    if case .scalar(let k) = key, k.string.hasSuffix("File"), case .scalar(let path) = value {
                        files = true
                        hasher.combine(k.string)
                        hasher.combine((try? reader.readFile(path.string)) ?? "")
                    } else {
                        visit(value)
                    }
                }
            case .sequence(let items):
                items.forEach(visit)
            default:
                break
            }
        }
        visit(node)
        if files { text += "\n# files \(hasher.finalize())" }
        return text
    }

    package var isScalar: Bool {
        if case .scalar = node { return true }
        return false
    }

    /// A warning at this value's position.
    package func warn(_ message: String) {
        reader.warn(message, path: path, mark: mark)
    }

    package func report(_ message: String) {
        reader.report(message, path: path, mark: mark)
    }

    var kindName: String {
        switch node {
        case .scalar: "a value"
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    /// The node as a mapping, or a reported problem.
    package func mapping() -> ConfigMapping? {
        guard case .mapping(let mapping) = node else {
            report("expected a mapping (key: value), found \(kindName)")
            return nil
        }
        var pairs: [(String, Node, Mark?)] = []
        var seen: Set<String> = []
        for (key, value) in mapping {
            guard case .scalar(let scalar) = key else {
                reader.report("keys must be plain names", path: path, mark: key.mark)
                continue
            }
            if !seen.insert(scalar.string).inserted {
                reader.report("duplicate key '\(scalar.string)'", path: join(scalar.string), mark: key.mark)
                continue
            }
            pairs.append((scalar.string, value, key.mark))
        }
        return ConfigMapping(path: path, mark: mark, pairs: pairs, reader: reader)
    }

    /// The node as a list; a single value is read as a list of one when `allowSingle`.
    package func sequence(allowSingle: Bool = false) -> [ConfigValue]? {
        switch node {
        case .sequence(let seq):
            return seq.enumerated().map { ConfigValue(node: $1, path: "\(path)[\($0)]", reader: reader) }
        case .scalar where allowSingle:
            return [self]
        default:
            report("expected a list, found \(kindName)")
            return nil
        }
    }

    /// The scalar text, with `${VAR}` expanded.
    package func string() -> String? {
        guard case .scalar(let scalar) = node else {
            report("expected a value, found \(kindName)")
            return nil
        }
        return reader.substitute(scalar.string, path: path, mark: mark)
    }

    func join(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
}
