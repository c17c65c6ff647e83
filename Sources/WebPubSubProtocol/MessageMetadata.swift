/// Message metadata, as the service takes it: REST sends carry it as `X-WebPubSub-Metadata-<key>`
/// headers, JSON-subprotocol frames as `"metadata": {"key": "value"}`, upstream events and their
/// replies as headers again. Keys are lower-cased HTTP token characters (at most 256), values
/// ASCII (at most 1,024), keys and values at most 8 KiB in all.
package enum MessageMetadata {
    package static let headerPrefix = "x-webpubsub-metadata-"
    package static let maxKeyLength = 256
    package static let maxValueLength = 1024
    package static let maxTotalBytes = 8 * 1024

    /// Why `key` cannot be a metadata key, or nil.
    package static func keyProblem(_ key: String) -> String? {
        guard !key.isEmpty, key.utf8.count <= maxKeyLength else {
            return "a metadata key is 1 to \(maxKeyLength) characters"
        }
        let allowed = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        guard key.utf8.allSatisfy(allowed.contains) else {
            return "metadata key '\(key.prefix(64))' holds a character HTTP header names may not (letters, digits and !#$%&'*+-.^_`|~ only)"
        }
        return nil
    }

    /// Why `value` cannot be a metadata value, or nil.
    package static func valueProblem(_ value: String) -> String? {
        guard value.utf8.count <= maxValueLength else { return "a metadata value is at most \(maxValueLength) characters" }
        guard value.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
            return "a metadata value is printable ASCII (encode anything else, e.g. percent- or base64-encoding)"
        }
        return nil
    }

    /// The entries (keys lower-cased unless `keepCase`: headers' are, frames' keep theirs, as in
    /// the service), or why they cannot be metadata. Keys differing only in case are one key.
    package static func validated(_ entries: [(String, String)], keepCase: Bool = false) -> Result<[MetadataEntry], MetadataError> {
        var seen: Set<String> = []
        var total = 0
        var out: [MetadataEntry] = []
        for (key, value) in entries {
            if let problem = keyProblem(key) ?? valueProblem(value) { return .failure(MetadataError(problem)) }
            let lower = key.lowercased()
            guard seen.insert(lower).inserted else { return .failure(MetadataError("metadata key '\(lower)' is given twice")) }
            total += lower.utf8.count + value.utf8.count
            out.append(MetadataEntry(key: keepCase ? key : lower, value: value))
        }
        guard total <= maxTotalBytes else { return .failure(MetadataError("metadata is at most \(maxTotalBytes) bytes of keys and values in all")) }
        return .success(out)
    }
}

/// One metadata key (lower-cased) and its value.
package struct MetadataEntry: Sendable, Hashable {
    package let key: String
    package let value: String

    package init(key: String, value: String) {
        self.key = key
        self.value = value
    }

    /// The REST and upstream header that carries it.
    package var headerName: String { "X-WebPubSub-Metadata-" + key }
}

package struct MetadataError: Error, Sendable, Equatable, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}
