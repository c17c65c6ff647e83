package import BridgeCore
import Foundation
package import NIOCore
package import WebPubSub
import WebPubSubProtocol

/// Sends through the Web PubSub REST client; maps its errors onto the retry policy's classes.
package struct WebPubSubTransport: DeliveryTransport {
    package let client: WebPubSubServiceClient

    package var workerExecutors: [any TaskExecutor] { client.taskExecutors }

    package init(client: WebPubSubServiceClient) {
        self.client = client
    }

    package func send(_ payload: ByteBuffer, dataType: DataType, to target: ResolvedTarget) async throws {
        let contentType = (target.dataType ?? dataType).contentType
        do {
            switch target.recipient {
            case .all:
                try await client.sendToAll(
                    hub: target.hub, payload: payload, contentType: contentType, excluded: target.excluded, filter: target.filter,
                    messageTTLSeconds: target.messageTTLSeconds, metadata: target.metadata)
            case .group(let group):
                try await client.sendToGroup(
                    hub: target.hub, group: group, payload: payload, contentType: contentType, excluded: target.excluded,
                    filter: target.filter, messageTTLSeconds: target.messageTTLSeconds, metadata: target.metadata)
            case .user(let user):
                try await client.sendToUser(
                    hub: target.hub, userId: user, payload: payload, contentType: contentType, filter: target.filter,
                    messageTTLSeconds: target.messageTTLSeconds, metadata: target.metadata)
            case .connection(let connection):
                try await client.sendToConnection(
                    hub: target.hub, connectionId: connection, payload: payload, contentType: contentType,
                    messageTTLSeconds: target.messageTTLSeconds, metadata: target.metadata)
            }
        } catch {
            if error.kind == .cancelled { throw CancellationError() }
            throw Self.classify(error)
        }
    }

    /// Network errors, 408, 429 and 5xx are retryable (after `Retry-After` if given); the rest is permanent.
    package static func classify(_ error: WebPubSubError) -> DeliveryFailure {
        let message = error.status == nil ? error.description : (error.errorCode.map { "\($0): " } ?? "") + error.message
        if error.isRetryable {
            return DeliveryFailure(.retryable(retryAfter: error.retryAfter), status: error.status, message: message)
        }
        return DeliveryFailure(.permanent, status: error.status, message: message)
    }
}

/// Prints each send instead of making it: `run --dry-run`.
package struct DryRunTransport: DeliveryTransport {
    let output: @Sendable (String) -> Void

    package init(output: @escaping @Sendable (String) -> Void = { print($0) }) {
        self.output = output
    }

    package func send(_ payload: ByteBuffer, dataType: DataType, to target: ResolvedTarget) async throws {
        let type = target.dataType ?? dataType
        let hub = percentEncode(target.hub)
        var path: String
        switch target.recipient {
        case .all: path = "/api/hubs/\(hub)/:send"
        case .group(let g): path = "/api/hubs/\(hub)/groups/\(percentEncode(g))/:send"
        case .user(let u): path = "/api/hubs/\(hub)/users/\(percentEncode(u))/:send"
        case .connection(let c): path = "/api/hubs/\(hub)/connections/\(percentEncode(c))/:send"
        }
        var query: [String] = target.excluded.map { "excluded=\(percentEncode($0))" }
        if let filter = target.filter { query.append("filter=\(percentEncode(filter))") }
        if let ttl = target.messageTTLSeconds { query.append("messageTtlSeconds=\(ttl)") }
        if !query.isEmpty { path += "?" + query.joined(separator: "&") }
        for entry in target.metadata { path += " [\(entry.headerName): \(entry.value)]" }
        let bytes = Array(payload.readableBytesView)
        let body = type == .binary ? "base64:" + Data(bytes).base64EncodedString() : String(decoding: bytes, as: UTF8.self)
        output("would send: POST \(path) [\(type.contentType), \(bytes.count) bytes] \(body)")
    }
}
