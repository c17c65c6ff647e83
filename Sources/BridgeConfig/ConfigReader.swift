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
