import AsyncHTTPClient
import BridgeObservability
import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import WebPubSub
import WebPubSubProtocol

/// One upstream event handler of a hub, as in the service's hub settings.
package struct EventHandlerSettings: Sendable, Equatable {
    /// `http://host/path/{event}`: `{hub}` and `{event}` are filled per event.
    package var urlTemplate: String
    /// `*`, `a,b`, or empty for none.
    package var userEventPattern: String
    /// A subset of `connect`, `connected`, `disconnected`.
    package var systemEvents: Set<String>

    package init(urlTemplate: String, userEventPattern: String = "*", systemEvents: Set<String> = ["connect", "connected", "disconnected"]) {
        self.urlTemplate = urlTemplate
        self.userEventPattern = userEventPattern
        self.systemEvents = systemEvents
    }

    func handles(userEvent name: String) -> Bool {
        let pattern = userEventPattern.trimmingCharacters(in: .whitespaces)
        if pattern == "*" { return true }
        return pattern.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces) == name }
    }

    /// The URL without its query (which may carry a `code=` secret), for logs.
    static func redacted(_ url: String) -> String {
        url.split(separator: "?", maxSplits: 1).first.map { String($0) + (url.contains("?") ? "?..." : "") } ?? url
    }

    func url(hub: String, event: String) -> String {
        urlTemplate.replacingOccurrences(of: "{hub}", with: percentEncode(hub)).replacingOccurrences(of: "{event}", with: percentEncode(event))
    }
}

/// An event for the upstream, in CloudEvents binary mode.
struct UpstreamEvent: Sendable {
    enum Kind: Sendable {
        case connect, connected, disconnected
        case user(String)

        var eventName: String {
            switch self {
            case .connect: "connect"
            case .connected: "connected"
            case .disconnected: "disconnected"
            case .user(let name): name
            }
        }

        var ceType: String {
            switch self {
            case .user(let name): "azure.webpubsub.user.\(name)"
            default: "azure.webpubsub.sys.\(eventName)"
            }
        }
    }

    var kind: Kind
    var hub: String
    var connectionId: String
    var userId: String?
    var subprotocol: String?
    var connectionState: String?
    var body: [UInt8]
    var contentType: String
    /// Sent as `X-WebPubSub-Metadata-*` headers.
    var metadata: [MetadataEntry] = []
}

struct UpstreamResponse: Sendable {
    var status: Int
    var body: [UInt8]
    var contentType: String?
    var connectionState: String?
    /// `X-WebPubSub-Metadata-*` of the answer: the reply's metadata (invalid ones are dropped).
    var metadata: [MetadataEntry] = []
}

/// Calls event handlers: the abuse-protection `OPTIONS` handshake once per URL, then `POST`
/// with `ce-*` headers and `ce-signature` for each access key.
final class UpstreamCaller: Sendable {
    let httpClient: HTTPClient
    let keys: [AccessKey]
    /// `WebHook-Request-Origin`: the hub's host.
    let origin: String
    let timeout: Duration
    let retries: Int
    let retryBackoff: Duration
    let logger: Logger
    private let validated = Mutex<Set<String>>([])

    init(
        httpClient: HTTPClient, keys: [AccessKey], origin: String, timeout: Duration = .seconds(30), retries: Int = 3,
        retryBackoff: Duration = .milliseconds(500), logger: Logger
    ) {
        self.httpClient = httpClient
        self.keys = keys
        self.origin = origin
        self.timeout = timeout
        self.retries = retries
        self.retryBackoff = retryBackoff
        self.logger = logger
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        /// Whether trying again could help (see ``mayPass(_:)``).
        var mayPass = true
    }

    /// Sends `event`; throws when the handler cannot be reached or refused the handshake. A
    /// non-blocking event is tried again (`retries` times) after a 5xx or when the handler could
    /// not be reached, with the same `ce-id`.
    func call(_ handler: EventHandlerSettings, _ event: UpstreamEvent) async throws -> UpstreamResponse {
        let retryable: Bool = if case .connect = event.kind { false } else { true }
        let id = UUID().uuidString
        var backoff = retryBackoff
        var attempt = 0
        while true {
            attempt += 1
            let last = !retryable || attempt > retries
            do {
                let response = try await callOnce(handler, event, id: id)
                if response.status < 500 || last { return response }
                logger.warning(
                    "event handler answered 5xx; trying again",
                    metadata: [
                        LogKey.status: "\(response.status)",
                        LogKey.hub: "\(event.hub)", LogKey.event: "\(event.kind.eventName)", LogKey.attempt: "\(attempt)",
                        LogKey.retryIn: "\(backoff)",
                    ])
            } catch {
                // A request the HTTP client refuses (a header it will not send) or a reply over
                // the limit fails the same way every time: no resend of the event.
                if last || (error as? Failure)?.mayPass == false { throw error }
                logger.warning(
                    "event handler failed; trying again",
                    metadata: [
                        LogKey.hub: "\(event.hub)", LogKey.event: "\(event.kind.eventName)", LogKey.attempt: "\(attempt)", LogKey.error: "\(error)",
                    ])
            }
            try await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(5))
        }
    }

    private func callOnce(_ handler: EventHandlerSettings, _ event: UpstreamEvent, id: String) async throws -> UpstreamResponse {
        let url = handler.url(hub: event.hub, event: event.kind.eventName)
        try await validate(handler.url(hub: event.hub, event: "validate"))
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        let h = [
            ("ce-specversion", "1.0"), ("ce-id", id), ("ce-source", "/hubs/\(event.hub)/client/\(event.connectionId)"),
            ("ce-type", event.kind.ceType), ("ce-time", ISO8601DateFormatter().string(from: Date())), ("ce-awpsversion", "1.0"),
            ("ce-hub", event.hub), ("ce-connectionId", event.connectionId), ("ce-eventName", event.kind.eventName),
            ("ce-signature", EventSignature.header(connectionId: event.connectionId, keys: keys)), ("WebHook-Request-Origin", origin),
            ("Content-Type", event.contentType),
        ]
        for (name, value) in h { request.headers.add(name: name, value: value) }
        if let userId = event.userId { request.headers.add(name: "ce-userId", value: userId) }
        if let subprotocol = event.subprotocol, !subprotocol.isEmpty { request.headers.add(name: "ce-subprotocol", value: subprotocol) }
        if let state = event.connectionState { request.headers.add(name: "ce-connectionState", value: state) }
        for entry in event.metadata { request.headers.add(name: entry.headerName, value: entry.value) }
        request.body = .bytes(ByteBuffer(bytes: event.body))
        do {
            let response = try await httpClient.execute(request, timeout: .milliseconds(Int64(timeout.components.seconds * 1000)), logger: logger)
            let body = try await response.body.collect(upTo: 4 * 1024 * 1024)
            var fields = HTTPFields()
            for header in response.headers where header.name.lowercased().hasPrefix(MessageMetadata.headerPrefix) {
                if let name = HTTPField.Name(header.name) { fields.append(HTTPField(name: name, value: header.value)) }
            }
            let metadata = (try? LocalHub.metadata(fields).get()) ?? []
            return UpstreamResponse(
                status: Int(response.status.code), body: Array(body.readableBytesView), contentType: response.headers.first(name: "Content-Type"),
                connectionState: response.headers.first(name: "ce-connectionState"), metadata: metadata)
        } catch {
            throw Failure(
                description: "event handler \(EventHandlerSettings.redacted(url)) could not be reached: \(error)", mayPass: Self.mayPass(error))
        }
    }

    /// Whether another try could go through: connection failures, resets and timeouts may; a
    /// request the client refuses to send (an invalid header value) or a reply body over the
    /// limit will not.
    static func mayPass(_ error: any Error) -> Bool {
        if error is NIOTooManyBytesError { return false }
        if let error = error as? HTTPClientError {
            let transient: [HTTPClientError] = [
                .connectTimeout, .readTimeout, .writeTimeout, .deadlineExceeded, .remoteConnectionClosed, .getConnectionFromPoolTimeout,
                .tlsHandshakeTimeout, .uncleanShutdown,
            ]
            return transient.contains(error)
        }
        return true
    }

    /// The abuse-protection handshake: `OPTIONS` with `WebHook-Request-Origin`; the handler must
    /// answer 2xx with `WebHook-Allowed-Origin: *` or our origin.
    private func validate(_ url: String) async throws {
        if validated.withLock({ $0.contains(url) }) { return }
        var request = HTTPClientRequest(url: url)
        request.method = .OPTIONS
        request.headers.add(name: "WebHook-Request-Origin", value: origin)
        request.headers.add(name: "ce-awpsversion", value: "1.0")
        let response: HTTPClientResponse
        do {
            response = try await httpClient.execute(request, timeout: .seconds(10), logger: logger)
            _ = try await response.body.collect(upTo: 64 * 1024)
        } catch {
            throw Failure(description: "event handler \(EventHandlerSettings.redacted(url)) could not be reached for validation: \(error)")
        }
        let allowed = response.headers[canonicalForm: "WebHook-Allowed-Origin"].map { String($0) }
        guard (200..<300).contains(Int(response.status.code)),
            allowed.contains(where: { $0 == "*" || $0.caseInsensitiveCompare(origin) == .orderedSame })
        else {
            throw Failure(
                description:
                    "event handler \(EventHandlerSettings.redacted(url)) refused the abuse-protection handshake (status \(response.status.code), WebHook-Allowed-Origin \(allowed))"
            )
        }
        validated.withLock { _ = $0.insert(url) }
    }
}
