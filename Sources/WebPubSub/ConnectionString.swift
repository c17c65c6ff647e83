/// `Endpoint=https://x.webpubsub.azure.com;AccessKey=...;Version=1.0;` (and `Port=` for local hubs).
///
/// Parsed as the official SDKs do: split on `;`, then on the first `=`; keys are
/// case-insensitive; `Endpoint` and `AccessKey` are required; `Port` is appended to the endpoint.
package struct ConnectionString: Sendable, Equatable, CustomStringConvertible {
    /// `http(s)://host[:port]` with no trailing slash.
    package let endpoint: String
    /// The key as written; its UTF-8 bytes are the HMAC key.
    package let accessKey: AccessKey
    package let version: String?

    package init(endpoint: String, accessKey: AccessKey, version: String? = nil) throws(WebPubSubError) {
        self.endpoint = try Self.normalizeEndpoint(endpoint)
        self.accessKey = accessKey
        self.version = version
    }

    package init(parsing text: String) throws(WebPubSubError) {
        var fields: [String: String] = [:]
        // Errors name the part by its position or its key, never with the text: a malformed
        // connection string may hold the access key anywhere, and errors are logged.
        for (index, segment) in text.split(separator: ";", omittingEmptySubsequences: true).enumerated() {
            let trimmed = segment.trimmingASCIIWhitespace()
            if trimmed.isEmpty { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw WebPubSubError.invalidConnectionString(
                    "part \(index + 1) has no '=' (expected Name=Value pairs separated by ';': Endpoint=https://...;AccessKey=...;Version=1.0;)")
            }
            let key = trimmed[..<eq].trimmingASCIIWhitespace().lowercased()
            let value = trimmed[trimmed.index(after: eq)...].trimmingASCIIWhitespace()
            if fields[key] == nil { fields[key] = value }
        }
        guard let endpoint = fields["endpoint"], !endpoint.isEmpty else {
            throw WebPubSubError.invalidConnectionString("'Endpoint' is missing")
        }
        guard let key = fields["accesskey"], !key.isEmpty else {
            throw WebPubSubError.invalidConnectionString(
                fields["authtype"] != nil
                    ? "'AuthType' connection strings (Entra ID) are not supported yet; give 'AccessKey'"
                    : "'AccessKey' is missing")
        }
        var full = try Self.normalizeEndpoint(endpoint)
        if let port = fields["port"] {
            guard let n = Int(port), (1...65535).contains(n) else {
                throw WebPubSubError.invalidConnectionString("'Port' must be a number from 1 to 65535")
            }
            guard let authority = full.split(separator: "://", maxSplits: 1).last, !authority.contains(":") else {
                throw WebPubSubError.invalidConnectionString("'Port' is given, but 'Endpoint' already has a port")
            }
            full += ":\(n)"
        }
        self.endpoint = full
        self.accessKey = AccessKey(key)
        self.version = fields["version"]
    }

    static func normalizeEndpoint(_ raw: String) throws(WebPubSubError) -> String {
        var endpoint = raw
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        let lower = endpoint.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://") else {
            throw WebPubSubError.invalidConnectionString("'Endpoint' must start with http:// or https://")
        }
        let authority = endpoint.split(separator: "://", maxSplits: 1).last ?? ""
        guard !authority.isEmpty, !authority.contains("/"), !authority.contains("?") else {
            throw WebPubSubError.invalidConnectionString("'Endpoint' must be scheme and host only (no path, no query)")
        }
        return endpoint
    }

    /// The string in the service's format.
    package var text: String {
        "Endpoint=\(endpoint);AccessKey=\(accessKey.value);Version=\(version ?? "1.0");"
    }

    /// Redacted: the key never reaches a log.
    package var description: String { "Endpoint=\(endpoint);AccessKey=***;" }
}

/// An access key. Its description is redacted so it cannot be logged by accident.
package struct AccessKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    package let value: String

    package init(_ value: String) { self.value = value }

    package var description: String { "***" }
    package var debugDescription: String { "AccessKey(***)" }
}

extension StringProtocol {
    func trimmingASCIIWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
