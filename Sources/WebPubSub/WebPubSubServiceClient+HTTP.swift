import AsyncHTTPClient
import AzureIdentity
import BridgeJSON
import BridgeObservability
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import WebPubSubProtocol

/// The plumbing under every operation: paths, URLs, authorization and the HTTP call with its retries.
extension WebPubSubServiceClient {
    struct Response {
        var status: Int
        var body: [UInt8]
    }

    /// One segment of a data-plane path: a fixed part of the API (`groups`, `:send`), written as
    /// it is, or a name, which is checked against the service's rules and percent-encoded.
    enum PathSegment: ExpressibleByStringLiteral {
        case fixed(String)
        case group(String)
        case user(String)
        case connection(String)

        init(stringLiteral value: String) { self = .fixed(value) }
    }

    /// `/api/hubs/{hub}/...`. Every name is percent-encoded (`:` `/` `?` `#` `%` included), so a
    /// name taken from a message can never become another path or a query; a name the service
    /// cannot have (`..`, empty, too long) is refused before any request.
    func hubPath(_ hub: String, _ segments: [PathSegment]) throws(WebPubSubError) -> String {
        if let problem = WebPubSubNames.hubProblem(hub) { throw .invalidArgument(problem) }
        var path = "/api/hubs/" + percentEncode(hub)
        for segment in segments {
            let problem: String?
            let text: String
            switch segment {
            case .fixed(let value): (problem, text) = (nil, value)
            case .group(let name): (problem, text) = (WebPubSubNames.groupProblem(name), percentEncode(name))
            case .user(let name): (problem, text) = (WebPubSubNames.userProblem(name), percentEncode(name))
            case .connection(let name): (problem, text) = (WebPubSubNames.connectionProblem(name), percentEncode(name))
            }
            if let problem { throw .invalidArgument(problem) }
            path += "/" + text
        }
        return path
    }

    func permissionPath(_ hub: String, _ permission: Permission, _ connectionId: String) throws(WebPubSubError) -> String {
        try hubPath(hub, ["permissions", .fixed(permission.rawValue), "connections", .connection(connectionId)])
    }

    func makeURL(_ path: String, query: [(String, String)]) throws(WebPubSubError) -> String {
        var url = endpoint + path + "?api-version=" + percentEncode(configuration.apiVersion)
        for (name, value) in query {
            url += "&" + percentEncode(name) + "=" + percentEncode(value)
        }
        return url
    }

    func resolveNextLink(_ next: String) throws(WebPubSubError) -> String {
        var url = next.hasPrefix("http://") || next.hasPrefix("https://") ? next : endpoint + (next.hasPrefix("/") ? "" : "/") + next
        if !url.contains("api-version=") {
            url += (url.contains("?") ? "&" : "?") + "api-version=" + percentEncode(configuration.apiVersion)
        }
        return url
    }

    /// An operation that succeeds with any 2xx: the service's documented status (202 for sends,
    /// 200 or 204 for the others) differs between API versions and examples.
    func call(
        _ operation: String, _ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: ByteBuffer? = nil,
        contentType: String? = nil, headers: [(String, String)] = []
    ) async throws(WebPubSubError) {
        let url = try makeURL(path, query: query)
        _ = try await perform(operation, method, url: url, body: body, contentType: contentType, headers: headers)
    }

    /// A `HEAD` that answers yes with any 2xx and no with 404.
    func exists(_ operation: String, _ path: String, query: [(String, String)] = []) async throws(WebPubSubError) -> Bool {
        let url = try makeURL(path, query: query)
        let response = try await perform(operation, .HEAD, url: url, body: nil, contentType: nil, alsoAnswers: [404])
        return response.status != 404
    }

    /// The Authorization header's bearer token for `url`.
    func authorization(for url: String, operation: String) async throws(WebPubSubError) -> String {
        switch authentication {
        case .accessKey(let key):
            return token(for: url, key: key)
        case .entra:
            do {
                return try await entraTokens!.token()
            } catch  where error.kind == .cancelled {
                throw WebPubSubError(kind: .cancelled, message: "the request was cancelled", operation: operation)
            } catch {
                throw WebPubSubError(kind: .authentication, message: "no Entra ID token: \(error.message)", operation: operation)
            }
        }
    }

    /// An access-key token for `url`, from the cache while it has at least 10% of its life left.
    func token(for url: String, key: AccessKey, now: Date = Date()) -> String {
        if let cached = tokenCache.withLock({ $0[url] }), cached.renewAt > now { return cached.token }
        let lifetime = Double(configuration.tokenLifetime.components.seconds)
        let token = AccessKeyJWT.restToken(url: url, key: key, expiry: now.addingTimeInterval(lifetime))
        tokenCache.withLock { cache in
            // Sends to many distinct groups or users would grow the cache without end: start over.
            if cache.count >= 10_000 { cache.removeAll(keepingCapacity: true) }
            cache[url] = (token, now.addingTimeInterval(lifetime * 0.9))
        }
        return token
    }

    func perform(
        _ operation: String, _ method: HTTPMethod, url: String, body: ByteBuffer?, contentType: String?, alsoAnswers: Set<Int> = [],
        headers extraHeaders: [(String, String)] = []
    ) async throws(WebPubSubError) -> Response {
        var headers = HTTPHeaders()
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        headers.add(name: "Authorization", value: "Bearer " + (try await authorization(for: url, operation: operation)))
        headers.add(name: "User-Agent", value: "wps-bridge")
        if body != nil { headers.add(name: "Content-Type", value: contentType ?? "application/octet-stream") }
        let answer: HTTP1ConnectionPool.Response
        if let pool, let target = poolTarget(url) {
            do {
                answer = try await pool.execute(method: method, target: target, headers: headers, body: body, timeout: configuration.requestTimeout)
            } catch {
                if error.kind == .cancelled || Task.isCancelled {
                    throw WebPubSubError(kind: .cancelled, message: "the request was cancelled", operation: operation)
                }
                throw WebPubSubError(kind: .transport, message: error.description, operation: operation)
            }
        } else {
            answer = try await performElsewhere(operation, method, url: url, headers: headers, body: body)
        }
        let response = answer.head
        let bytes = answer.body
        let status = Int(response.status.code)
        let body = Array(bytes.readableBytesView)
        // Any 2xx is success; `alsoAnswers` are other statuses that are an answer (404: "no such").
        guard (200..<300).contains(status) || alsoAnswers.contains(status) else {
            throw WebPubSubError.fromResponse(
                operation: operation, status: status, reason: response.status.reasonPhrase, body: body,
                errorCodeHeader: response.headers.first(name: "x-ms-error-code"), retryAfter: Self.retryAfter(response.headers))
        }
        return Response(status: status, body: body)
    }

    /// The path and query of `url` when it is on the endpoint (every URL this client builds);
    /// nil for another origin (a `nextLink` may name one).
    func poolTarget(_ url: String) -> String? {
        guard url.hasPrefix(endpoint) else { return nil }
        let rest = url.dropFirst(endpoint.count)
        return rest.first == "/" ? String(rest) : nil
    }

    /// A request to another origin than the endpoint, through AsyncHTTPClient.
    func performElsewhere(
        _ operation: String, _ method: HTTPMethod, url: String, headers: HTTPHeaders, body: ByteBuffer?
    ) async throws(WebPubSubError) -> HTTP1ConnectionPool.Response {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        if let body {
            request.body = .bytes(body)
        } else if method == .POST || method == .PUT {
            request.headers.add(name: "Content-Length", value: "0")
        }
        do {
            let response = try await httpClient.execute(request, timeout: timeAmount(configuration.requestTimeout), logger: logger)
            let bytes = try await response.body.collect(upTo: 4 * 1024 * 1024)
            return .init(head: .init(version: .http1_1, status: response.status, headers: response.headers), body: bytes)
        } catch is CancellationError {
            throw WebPubSubError(kind: .cancelled, message: "the request was cancelled", operation: operation)
        } catch let error as HTTPClientError where error == .cancelled {
            throw WebPubSubError(kind: .cancelled, message: "the request was cancelled", operation: operation)
        } catch {
            throw WebPubSubError(kind: .transport, message: describeHTTPFailure(error), operation: operation)
        }
    }

    /// `Retry-After` (delta seconds or HTTP date), `retry-after-ms`, `x-ms-retry-after-ms`.
    static func retryAfter(_ headers: HTTPHeaders, now: Date = Date()) -> Duration? {
        for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
            if let v = headers.first(name: name), let ms = Double(v.trimmingASCIIWhitespace()), ms.isFinite, ms >= 0 {
                return .milliseconds(Int64(min(ms, 86_400_000)))
            }
        }
        guard let value = headers.first(name: "Retry-After")?.trimmingASCIIWhitespace() else { return nil }
        if let seconds = Double(value), seconds.isFinite, seconds >= 0 { return .milliseconds(Int64(min(seconds, 86_400) * 1000)) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        if let date = formatter.date(from: value) {
            return .milliseconds(Int64(max(0, date.timeIntervalSince(now)) * 1000))
        }
        return nil
    }
}
