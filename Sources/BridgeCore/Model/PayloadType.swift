import BridgeJSON

/// How a source that gets raw bytes (Kafka values, Redis messages) decides their data type.
package enum PayloadType: String, Sendable, CaseIterable {
    /// JSON when the bytes parse as JSON, text when they are UTF-8, binary otherwise.
    case auto
    case json, text, binary

    /// The data type of `bytes`, and why they cannot be sent as the declared type (the message is
    /// then dead-lettered rather than sent).
    package func classify(_ bytes: [UInt8]) -> (DataType, rejection: String?) {
        switch self {
        case .binary:
            return (.binary, nil)
        case .text:
            return String(validating: bytes, as: UTF8.self) == nil ? (.text, "not valid UTF-8 (dataType: text)") : (.text, nil)
        case .json:
            do {
                _ = try JSONValue.parse(bytes)
                return (.json, nil)
            } catch {
                return (.json, "not valid JSON (dataType: json): \(error)")
            }
        case .auto:
            if (try? JSONValue.parse(bytes)) != nil { return (.json, nil) }
            if String(validating: bytes, as: UTF8.self) != nil { return (.text, nil) }
            return (.binary, nil)
        }
    }
}
