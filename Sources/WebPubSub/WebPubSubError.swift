import BridgeJSON

/// An error from the Web PubSub client: a bad argument or connection string, a failed request
/// (no response), or a response the service refused (status and body kept).
package struct WebPubSubError: Error, Sendable, CustomStringConvertible {
    /// What went wrong; a struct so that kinds can be added without breaking callers.
    package struct Kind: Sendable, Hashable, CustomStringConvertible {
        enum Base: Sendable, Hashable { case invalidConnectionString, invalidArgument, transport, status, cancelled, authentication }
        let base: Base
        package static let invalidConnectionString = Kind(base: .invalidConnectionString)
        package static let invalidArgument = Kind(base: .invalidArgument)
        /// No response: connection refused, reset, timeout.
        package static let transport = Kind(base: .transport)
        /// The service answered with an unexpected status.
        package static let status = Kind(base: .status)
        /// The calling task was cancelled; the request may or may not have reached the service.
        package static let cancelled = Kind(base: .cancelled)
        /// No Entra ID token could be obtained (the identity endpoint failed or refused).
        package static let authentication = Kind(base: .authentication)
        package var description: String {
            switch base {
            case .invalidConnectionString: "invalid connection string"
            case .invalidArgument: "invalid argument"
            case .transport: "request failed"
            case .status: "unexpected status"
            case .cancelled: "cancelled"
            case .authentication: "authentication failed"
            }
        }
    }

    package let kind: Kind
    package let message: String
    /// HTTP status for `.status`.
    package let status: Int?
    /// The response body (first 4 KiB), for `.status`.
    package let body: String?
    /// `x-ms-error-code`, or `error.code` in the body.
    package let errorCode: String?
    /// From `Retry-After` (seconds or HTTP date), `retry-after-ms` or `x-ms-retry-after-ms`.
    package let retryAfter: Duration?
    /// The operation, e.g. `sendToGroup`.
    package let operation: String?

    init(
        kind: Kind, message: String, status: Int? = nil, body: String? = nil, errorCode: String? = nil,
        retryAfter: Duration? = nil, operation: String? = nil
    ) {
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        self.errorCode = errorCode
        self.retryAfter = retryAfter
        self.operation = operation
    }

    static func invalidConnectionString(_ message: String) -> WebPubSubError {
        WebPubSubError(kind: .invalidConnectionString, message: message)
    }

    static func invalidArgument(_ message: String) -> WebPubSubError {
        WebPubSubError(kind: .invalidArgument, message: message)
    }

    /// Worth another try: no response, 408, 429 or 5xx.
    package var isRetryable: Bool {
        switch kind {
        // An identity endpoint that failed (after its own retries) may answer later.
        case .transport, .authentication: return true
        case .status:
            guard let status else { return false }
            return status == 408 || status == 429 || status >= 500
        default: return false
        }
    }

    package var description: String {
        var s = operation.map { "\($0): " } ?? ""
        switch kind {
        case .status:
            s += "HTTP \(status ?? 0)"
            if let errorCode { s += " \(errorCode)" }
            if !message.isEmpty { s += ": \(message)" }
        default:
            s += "\(kind): \(message)"
        }
        return s
    }

    /// Builds the error for an unexpected response, reading the service's error body shapes
    /// (`{"error":{"code","message"}}` and the older flat `{"code","message"}`).
    static func fromResponse(
        operation: String, status: Int, reason: String, body: [UInt8], errorCodeHeader: String?, retryAfter: Duration?
    ) -> WebPubSubError {
        let text = String(decoding: body.prefix(4096), as: UTF8.self)
        var code = errorCodeHeader
        var message = reason
        if let json = try? JSONValue.parse(body) {
            let error = json["error"] ?? json
            if code == nil, let c = error["code"]?.stringValue { code = c }
            if let m = error["message"]?.stringValue { message = m }
        } else if !text.isEmpty {
            message = text
        }
        return WebPubSubError(
            kind: .status, message: message, status: status, body: text, errorCode: code, retryAfter: retryAfter, operation: operation)
    }
}
