import Foundation
import Yams

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

    /// A size in bytes: `512`, `64KB`, `1MB` (KB and MB are 1,024 and 1,048,576 bytes; KiB and
    /// MiB are accepted too).
    package func byteSize(_ key: String, range: ClosedRange<Int>) -> Int? {
        guard let v = value(key), let s = v.string() else { return nil }
        guard let n = Self.parseByteSize(s) else {
            v.report("'\(s)' is not a size (write e.g. 512, 64KB, 1MB)")
            return nil
        }
        guard range.contains(n) else {
            v.report("\(s) is out of range \(range.lowerBound)...\(range.upperBound) bytes")
            return nil
        }
        return n
    }

    static func parseByteSize(_ text: String) -> Int? {
        let s = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, Int)] = [("KIB", 1024), ("MIB", 1 << 20), ("KB", 1024), ("MB", 1 << 20), ("K", 1024), ("M", 1 << 20), ("B", 1)]
        for (suffix, factor) in units where s.hasSuffix(suffix) {
            guard let n = Int(s.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), n >= 0, n <= Int.max / factor else { return nil }
            return n * factor
        }
        guard let n = Int(s), n >= 0 else { return nil }
        return n
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

    /// A duration within `range`; outside it, reported with `why` and dropped (the default stays).
    package func duration(_ key: String, within range: ClosedRange<Duration>, why: String) -> Duration? {
        guard let d = duration(key) else { return nil }
        guard range.contains(d) else {
            value(key)?.report("\(key) must be from \(Self.words(range.lowerBound)) to \(Self.words(range.upperBound)): \(why)")
            return nil
        }
        return d
    }

    /// `500ms`, `1s`, `60s`: a duration as it is written in the config.
    static func words(_ d: Duration) -> String {
        let ms = d / .milliseconds(1)
        return ms < 1000 || ms.truncatingRemainder(dividingBy: 1000) != 0 ? "\(Int(ms))ms" : "\(Int(ms / 1000))s"
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
