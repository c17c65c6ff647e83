package import NIOCore

/// Why a send failed, classified for the retry policy.
package struct DeliveryFailure: Error, Sendable, CustomStringConvertible {
    package enum Kind: Sendable, Equatable {
        /// Network errors, 408, 429, 5xx: try again, after `retryAfter` when the service said so.
        case retryable(retryAfter: Duration?)
        /// Other 4xx, an unresolvable template, an invalid payload: dead-letter it.
        case permanent
    }

    package var kind: Kind
    /// The HTTP status, when there was a response.
    package var status: Int?
    package var message: String

    package init(_ kind: Kind, status: Int? = nil, message: String) {
        self.kind = kind
        self.status = status
        self.message = message
    }

    package var isRetryable: Bool {
        if case .retryable = kind { return true }
        return false
    }

    package var description: String {
        status.map { "\($0) \(message)" } ?? message
    }
}

/// Sends one payload to one resolved target: the Web PubSub REST client behind a protocol, so
/// that the core knows nothing of HTTP.
package protocol DeliveryTransport: Sendable {
    /// - Throws: ``DeliveryFailure``; anything else counts as a retryable network error.
    func send(_ payload: ByteBuffer, dataType: DataType, to target: ResolvedTarget) async throws
    /// Where the dispatcher's workers should run (the transport's event loops), or none.
    var workerExecutors: [any TaskExecutor] { get }
}

extension DeliveryTransport {
    package var workerExecutors: [any TaskExecutor] { [] }
}
