import Foundation
import Yams

/// One problem in a config file, with where it is.
package struct ConfigIssue: Sendable, CustomStringConvertible, Equatable {
    /// YAML path, e.g. `routes[0].to[1].group`.
    package let path: String
    package let line: Int?
    package let column: Int?
    package let message: String

    package init(path: String, line: Int?, column: Int?, message: String) {
        self.path = path
        self.line = line
        self.column = column
        self.message = message
    }

    package var description: String {
        let location = line.map { "line \($0)" + (column.map { ", column \($0)" } ?? "") }
        let place = [location, path.isEmpty ? nil : path].compactMap { $0 }.joined(separator: ": ")
        return place.isEmpty ? message : "\(place): \(message)"
    }
}

/// Everything wrong with a config file.
package struct ConfigError: Error, Sendable, CustomStringConvertible {
    package let file: String
    package let issues: [ConfigIssue]

    package init(file: String, issues: [ConfigIssue]) {
        self.file = file
        self.issues = issues
    }

    package var description: String {
        let count = issues.count == 1 ? "1 problem" : "\(issues.count) problems"
        return "\(file): \(count)\n" + issues.map { "  \(file):\($0)" }.joined(separator: "\n")
    }
}

/// Collects the problems found while reading a config, and resolves `${VAR}` references.
package final class ConfigReader: @unchecked Sendable {
    // Used by one thread while a config is read; @unchecked so factories can keep a reference.
    package private(set) var issues: [ConfigIssue] = []
    package private(set) var warnings: [ConfigIssue] = []
    package let environment: [String: String]
    /// Relative file paths (`accessKeyFile`, dead-letter `path`) are read against this folder.
    package let baseDirectory: String

    package init(environment: [String: String], baseDirectory: String) {
        self.environment = environment
        self.baseDirectory = baseDirectory
    }

    /// A problem at `path` with no position in the file (a key that is missing altogether).
    package func report(_ message: String, path: String) {
        report(message, path: path, mark: nil)
    }

    func report(_ message: String, path: String, mark: Mark?) {
        issues.append(ConfigIssue(path: path, line: mark?.line, column: mark?.column, message: message))
    }

    /// A warning at `path` with no position in the file.
    package func warn(_ message: String, path: String) {
        warn(message, path: path, mark: nil)
    }

    func warn(_ message: String, path: String, mark: Mark?) {
        warnings.append(ConfigIssue(path: path, line: mark?.line, column: mark?.column, message: message))
    }

    /// Parses `text` and returns its root mapping; a YAML syntax error is reported and gives nil.
    package func root(yaml text: String) -> ConfigMapping? {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            report(Self.describe(error), path: "", mark: Self.mark(of: error))
            return nil
        } catch {
            report("not valid YAML: \(error)", path: "", mark: nil)
            return nil
        }
        guard let node else {
            report("the file is empty", path: "", mark: nil)
            return nil
        }
        return ConfigValue(node: node, path: "", reader: self).mapping()
    }

    static func mark(of error: YamlError) -> Mark? {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return mark
        default:
            return nil
        }
    }

    static func describe(_ error: YamlError) -> String {
        switch error {
        case .scanner(let context, let problem, _, _), .parser(let context, let problem, _, _),
            .composer(let context, let problem, _, _):
            let ctx = context.map { "\($0.text) " } ?? ""
            return "not valid YAML: \(ctx)\(problem)"
        default:
            return "not valid YAML: \(error)"
        }
    }

    /// Expands `${NAME}` and `${NAME:-default}`; `$${` is a literal `${`.
    func substitute(_ text: String, path: String, mark: Mark?) -> String? {
        guard text.contains("$") else { return text }
        var out = ""
        var rest = text[...]
        var ok = true
        while let dollar = rest.firstIndex(of: "$") {
            out += rest[..<dollar]
            let after = rest[rest.index(after: dollar)...]
            if after.hasPrefix("${") {
                out += "${"
                rest = after.dropFirst(2)
                continue
            }
            guard after.hasPrefix("{") else {
                out += "$"
                rest = after
                continue
            }
            guard let close = after.firstIndex(of: "}") else {
                report("unclosed '${' in '\(text)'", path: path, mark: mark)
                return nil
            }
            let body = after[after.index(after: after.startIndex)..<close]
            rest = after[after.index(after: close)...]
            let name: Substring
            let fallback: Substring?
            if let sep = body.range(of: ":-") {
                name = body[..<sep.lowerBound]
                fallback = body[sep.upperBound...]
            } else {
                name = body
                fallback = nil
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                report("invalid variable reference '${\(body)}'", path: path, mark: mark)
                ok = false
                continue
            }
            if let value = environment[String(name)], !(value.isEmpty && fallback != nil) {
                out += value
            } else if let fallback {
                out += fallback
            } else {
                report(
                    "environment variable \(name) is not set (write ${\(name):-default} to give a default)",
                    path: path, mark: mark)
                ok = false
            }
        }
        out += rest
        return ok ? out : nil
    }

    /// Reads a file named in the config (relative to the config's folder).
    package func readFile(_ path: String) throws -> String {
        let full = path.hasPrefix("/") ? path : baseDirectory + "/" + path
        return try String(contentsOfFile: full, encoding: .utf8)
    }

    package func absolutePath(_ path: String) -> String {
        path.hasPrefix("/") ? path : baseDirectory + "/" + path
    }
}

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

/// A mapping in the config. Every accessor reports a problem with path and line rather than
/// throwing, so that one pass finds every mistake.
package struct ConfigMapping {
    package let path: String
    let mark: Mark?
    let pairs: [(String, Node, Mark?)]
    package let reader: ConfigReader

    package var keys: [String] { pairs.map(\.0) }

    package func has(_ key: String) -> Bool { pairs.contains { $0.0 == key } }

    /// The same mapping without `keys` (those a caller read itself, such as `type`), so that
    /// what reads the rest does not call them unknown.
    package func without(_ keys: Set<String>) -> ConfigMapping {
        ConfigMapping(path: path, mark: mark, pairs: pairs.filter { !keys.contains($0.0) }, reader: reader)
    }

    package func report(_ message: String) {
        reader.report(message, path: path, mark: mark)
    }

    func childPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    package func value(_ key: String) -> ConfigValue? {
        guard let pair = pairs.first(where: { $0.0 == key }) else { return nil }
        return ConfigValue(node: pair.1, path: childPath(key), reader: reader)
    }

    /// Reports every key not in `allowed`, with a suggestion when one is close.
    package func checkKeys(_ allowed: [String], what: String? = nil) {
        for (key, _, keyMark) in pairs where !allowed.contains(key) {
            var message = "unknown key '\(key)'"
            if let what { message += " in \(what)" }
            if let suggestion = allowed.min(by: { editDistance($0, key) < editDistance($1, key) }),
                editDistance(suggestion, key) <= max(2, key.count / 3)
            {
                message += " (did you mean '\(suggestion)'?)"
            } else {
                message += "; expected one of: \(allowed.joined(separator: ", "))"
            }
            reader.report(message, path: childPath(key), mark: keyMark)
        }
    }

    package func requireKey(_ key: String, _ explanation: String = "") -> ConfigValue? {
        guard let v = value(key) else {
            report("missing required key '\(key)'" + (explanation.isEmpty ? "" : ": \(explanation)"))
            return nil
        }
        return v
    }

    package func string(_ key: String, required: Bool = false) -> String? {
        guard let v = required ? requireKey(key) : value(key) else { return nil }
        return v.string()
    }

    /// A non-empty string.
    package func nonEmptyString(_ key: String, required: Bool = false) -> String? {
        guard let v = required ? requireKey(key) : value(key), let s = v.string() else { return nil }
        if s.isEmpty {
            v.report("'\(key)' must not be empty")
            return nil
        }
        return s
    }

    package func int(_ key: String, range: ClosedRange<Int>? = nil) -> Int? {
        guard let v = value(key), let s = v.string() else { return nil }
        guard let n = Int(s) else {
            v.report("'\(s)' is not a whole number")
            return nil
        }
        if let range, !range.contains(n) {
            v.report("\(n) is out of range \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return n
    }

    package func bool(_ key: String) -> Bool? {
        guard let v = value(key), let s = v.string() else { return nil }
        switch s.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            v.report("'\(s)' is not true or false")
            return nil
        }
    }

    /// `250ms`, `10s`, `5m`, `1h`, or a number of seconds.
    package func duration(_ key: String) -> Duration? {
        guard let v = value(key), let s = v.string() else { return nil }
        guard let d = parseDuration(s) else {
            v.report("'\(s)' is not a duration (write e.g. 250ms, 10s, 5m)")
            return nil
        }
        return d
    }

    package func enumeration<E: RawRepresentable & CaseIterable>(_ key: String, _ type: E.Type) -> E? where E.RawValue == String {
        guard let v = value(key), let s = v.string() else { return nil }
        guard let e = E(rawValue: s) else {
            v.report("'\(s)' is not one of: \(E.allCases.map(\.rawValue).joined(separator: ", "))")
            return nil
        }
        return e
    }

    package func mapping(_ key: String, required: Bool = false) -> ConfigMapping? {
        guard let v = required ? requireKey(key) : value(key) else { return nil }
        return v.mapping()
    }

    package func list(_ key: String, required: Bool = false, allowSingle: Bool = false) -> [ConfigValue]? {
        guard let v = required ? requireKey(key) : value(key) else { return nil }
        return v.sequence(allowSingle: allowSingle)
    }

    /// A string or a list of strings.
    package func stringList(_ key: String) -> [String]? {
        guard let items = list(key, allowSingle: true) else { return nil }
        return items.compactMap { $0.string() }
    }

    /// A secret given inline (`key`) or in a file (`keyFile`): exactly one of them.
    package func secret(_ key: String, required: Bool = false) -> String? {
        let fileKey = key + "File"
        switch (has(key), has(fileKey)) {
        case (true, true):
            report("give '\(key)' or '\(fileKey)', not both")
            return nil
        case (true, false):
            return nonEmptyString(key)
        case (false, true):
            guard let v = value(fileKey), let file = v.string() else { return nil }
            do {
                let content = try reader.readFile(file).trimmingCharacters(in: .whitespacesAndNewlines)
                if content.isEmpty { v.report("secret file '\(file)' is empty") }
                return content.isEmpty ? nil : content
            } catch {
                v.report("cannot read secret file '\(file)': \(Self.describeFileError(error))")
                return nil
            }
        case (false, false):
            if required { report("missing '\(key)' (or '\(fileKey)')") }
            return nil
        }
    }

    static func describeFileError(_ error: any Error) -> String {
        let ns = error as NSError
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if ns.domain == NSCocoaErrorDomain, ns.code == NSFileReadNoSuchFileError { return "no such file" }
        if ns.domain == NSCocoaErrorDomain, ns.code == NSFileReadNoPermissionError { return "permission denied" }
        return ns.localizedDescription
    }
}

/// Parses `250ms`, `10s`, `1.5s`, `5m`, `1h`, or a plain number of seconds.
package func parseDuration(_ text: String) -> Duration? {
    let s = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
    for (suffix, scale) in units where s.hasSuffix(suffix) {
        let number = s.dropLast(suffix.count)
        // "5ms" also ends in "s"; the "ms" entry comes first.
        guard let value = Double(number), value >= 0, value.isFinite else { return nil }
        return .milliseconds(Int64((value * scale * 1000).rounded()))
    }
    guard let seconds = Double(s), seconds >= 0, seconds.isFinite else { return nil }
    return .milliseconds(Int64((seconds * 1000).rounded()))
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.lowercased())
    let b = Array(b.lowercased())
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}
