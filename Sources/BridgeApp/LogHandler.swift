import BridgeJSON
import Foundation
package import Logging
import Synchronization

/// Writes log lines to standard error as text (`2026-11-29T10:00:00Z info wps-bridge: k=v [Module] message`)
/// or JSON (one object per line: `time`, `level`, `label`, `source`, `message`, then the
/// metadata), with secrets redacted from messages and metadata.
package struct BridgeLogHandler: LogHandler {
    package enum Format: String, Sendable, CaseIterable {
        case text, json
    }

    package var logLevel: Logger.Level
    package var metadata: Logger.Metadata = [:]
    package var metadataProvider: Logger.MetadataProvider?
    let label: String
    let format: Format

    package init(label: String, format: Format, level: Logger.Level, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.format = format
        self.logLevel = level
        self.metadataProvider = metadataProvider
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let time = Date().formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        let message = Redaction.redact(event.message.description)
        let line: String
        switch format {
        case .json:
            var members: [(String, JSONValue)] = [
                ("time", .string(time)), ("level", .string(event.level.rawValue)), ("label", .string(label)), ("source", .string(event.source)),
                ("message", .string(message)),
            ]
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) where !["time", "level", "label", "source", "message"].contains(key) {
                members.append((key, Self.json(value)))
            }
            line = JSONValue.object(members).serialized
        case .text:
            let fields = merged.sorted { $0.key < $1.key }.map { "\(Self.escaped($0.key))=\(Self.textValue(Redaction.redact($0.value.description)))" }
                .joined(separator: " ")
            line = "\(time) \(event.level) \(label):\(fields.isEmpty ? "" : " " + fields) [\(event.source)] \(Self.escaped(message))"
        }
        Self.output.withLock { _ in writeToStandardError(line + "\n") }
    }

    static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let s): .string(Redaction.redact(s))
        case .stringConvertible(let c): .string(Redaction.redact(c.description))
        case .array(let items): .array(items.map(json))
        case .dictionary(let d): .object(d.sorted { $0.key < $1.key }.map { ($0.key, json($0.value)) })
        }
    }

    /// `text` with control characters written as escapes (`\n`, `\r`, `\t`, `\u{1B}`): a name
    /// taken from a request (`%0A` in a hub name) cannot start a forged log line.
    static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var out = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out.append(contentsOf: #"\n"#.unicodeScalars)
            case "\r": out.append(contentsOf: #"\r"#.unicodeScalars)
            case "\t": out.append(contentsOf: #"\t"#.unicodeScalars)
            case _ where isControl(scalar): out.append(contentsOf: "\\u{\(String(scalar.value, radix: 16, uppercase: true))}".unicodeScalars)
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    /// C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }

    /// A metadata value in the text format: escaped, and quoted when it holds a space, `=` or `"`
    /// (so that it cannot pose as another field).
    static func textValue(_ value: String) -> String {
        let text = escaped(value)
        guard text.contains(where: { $0 == " " || $0 == "=" || $0 == "\"" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// One line at a time, whole.
    static let output = Mutex(())
}

/// Writes to stderr with write(2); a closed stderr loses the text instead of stopping the
/// process (FileHandle's write traps on an error).
package func writeToStandardError(_ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// Hides the secrets that can end up in log text: access keys in connection strings (Web
/// PubSub's `AccessKey`, Event Hubs' `SharedAccessKey`, storage's `AccountKey`), tokens,
/// passwords and secrets (`access_token`, `awps_reconnection_token`, `token`, `refresh_token`,
/// `id_token`, `client_secret`, `password`, `secret`, `signature`; `code` and `sig` as URL
/// parameters), bearer tokens, and the password of a URL (`redis://user:password@host`),
/// whatever logged them (this bridge, or a library).
package enum Redaction {
    struct Rule {
        let key: String
        var caseInsensitive = true
        /// The value runs up to one of these.
        var ending = "&\" ',;)]}\n"
        /// Only right after one of these (`?code=`, `&sig=`); nil: after anything but a letter,
        /// digit or `_` (a whole name).
        var after: String?
        /// Shorter values are left alone (`Bearer` in prose).
        var minimumLength = 1
    }

    static let rules: [Rule] =
        [
            "access_token=", "awps_reconnection_token=", "refresh_token=", "id_token=", "token=", "client_secret=", "password=", "secret=",
            "signature=",
        ].map { Rule(key: $0) } + [
            Rule(key: "code=", after: "?&"), Rule(key: "sig=", after: "?&"),
            Rule(key: "AccessKey=", ending: ";\" \n"), Rule(key: "SharedAccessKey=", ending: ";\" \n"), Rule(key: "AccountKey=", ending: ";\" \n"),
            Rule(key: "Bearer ", caseInsensitive: false, ending: "\" ,;\n", minimumLength: 16),
        ]

    package static func redact(_ text: String) -> String {
        guard text.contains("=") || text.contains("Bearer ") || text.contains("://") else { return text }
        var result = text
        for rule in rules where result.range(of: rule.key, options: rule.caseInsensitive ? [.caseInsensitive] : []) != nil {
            result = hideValues(rule, in: result)
        }
        if result.contains("://") { result = hideURLPasswords(result) }
        return result
    }

    /// `scheme://user:password@host` -> `scheme://user:***@host`, for each URL in the text.
    static func hideURLPasswords(_ text: String) -> String {
        var out = ""
        var rest = Substring(text)
        while let scheme = rest.range(of: "://") {
            out += rest[..<scheme.upperBound]
            rest = rest[scheme.upperBound...]
            // The authority ends at the path, or where the next thing in the text starts.
            let authorityEnd = rest.firstIndex { "/ \"'\n?#,;[]()<>".contains($0) } ?? rest.endIndex
            let authority = rest[..<authorityEnd]
            if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
                out += authority[...colon] + "***" + authority[at...]
            } else {
                out += authority
            }
            rest = rest[authorityEnd...]
        }
        return out + rest
    }

    /// Replaces what follows each occurrence of the rule's key with `***`.
    static func hideValues(_ rule: Rule, in text: String) -> String {
        var out = ""
        var rest = Substring(text)
        let options: String.CompareOptions = rule.caseInsensitive ? [.caseInsensitive] : []
        var previous: Character?
        while let range = rest.range(of: rule.key, options: options) {
            let before = range.lowerBound == rest.startIndex ? previous : rest[rest.index(before: range.lowerBound)]
            out += rest[..<range.upperBound]
            previous = rest[..<range.upperBound].last
            rest = rest[range.upperBound...]
            if let after = rule.after {
                guard let before, after.contains(before) else { continue }
            } else if let before, before.isLetter || before.isNumber || before == "_" {
                continue
            }
            let end = rest.firstIndex { rule.ending.contains($0) } ?? rest.endIndex
            let value = rest[..<end]
            guard value.count >= rule.minimumLength, value != "***" else { continue }
            out += "***"
            previous = "*"
            rest = rest[end...]
        }
        return out + rest
    }
}
