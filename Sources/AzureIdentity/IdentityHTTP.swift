import AsyncHTTPClient
import BridgeJSON
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Requests to identity endpoints, with the retries the Azure SDKs make: 429 and 5xx (and, for
/// the managed-identity endpoints, 404 and 410 while they start) are tried again with backoff,
/// as is a connection that fails.
struct IdentityHTTP: Sendable {
    var httpClient: HTTPClient = .shared
    /// Attempts after the first.
    var retries = 4
    /// First backoff; doubled each time (plus up to 25% jitter), or the endpoint's Retry-After.
    var backoff: Duration = .milliseconds(250)
    var timeout: Duration = .seconds(30)
    var retryStatuses: Set<Int> = [429, 500, 502, 503, 504]

    struct Response {
        var status: Int
        var json: JSONValue?
        var retryAfter: Duration?
    }

    /// Performs `method url` and returns the final answer (any status); throws on transport
    /// failure once the retries are used up.
    func send(
        _ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], form: [(String, String)]? = nil, what: String
    ) async throws(IdentityError) -> Response {
        var attempt = 0
        var delay = backoff
        while true {
            var request = HTTPClientRequest(url: url)
            request.method = method
            request.headers.add(name: "User-Agent", value: "wps-bridge")
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            if let form {
                request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
                let body = form.map { percentEncodeUnreserved($0.0) + "=" + percentEncodeUnreserved($0.1) }.joined(separator: "&")
                request.body = .bytes(ByteBuffer(string: body))
            }
            var outcome: Result<Response, IdentityError>
            do {
                let response = try await httpClient.execute(request, timeout: .milliseconds(Int64(timeout / .milliseconds(1))))
                let bytes = try await response.body.collect(upTo: 1024 * 1024)
                outcome = .success(
                    Response(
                        status: Int(response.status.code), json: try? JSONValue.parse(Array(bytes.readableBytesView)),
                        retryAfter: response.headers.first(name: "Retry-After").flatMap(Double.init).flatMap(retryAfterDuration)))
            } catch is CancellationError {
                throw IdentityError(.transport, "\(what): cancelled")
            } catch {
                outcome = .failure(IdentityError(.transport, "\(what): \(describeHTTPFailure(error))"))
            }
            let retry: Bool
            switch outcome {
            case .success(let r): retry = retryStatuses.contains(r.status)
            case .failure: retry = true
            }
            if !retry || attempt >= retries { return try outcome.get() }
            attempt += 1
            var wait = delay + delay * Double.random(in: 0...0.25)
            if case .success(let r) = outcome, let after = r.retryAfter { wait = min(max(wait, after), .seconds(60)) }
            do { try await Task.sleep(for: wait) } catch { throw IdentityError(.transport, "\(what): cancelled") }
            delay *= 2
        }
    }
}

/// A `Retry-After` in seconds as a duration of at most a minute; nil when it is not a sane number.
func retryAfterDuration(_ seconds: Double) -> Duration? {
    guard seconds.isFinite, seconds >= 0 else { return nil }
    return .milliseconds(Int64(min(seconds, 60) * 1000))
}

/// Whether `url`'s host is a loopback address (where plain http may carry a secret).
func isLoopback(_ url: String) -> Bool {
    guard let authority = url.split(separator: "://", maxSplits: 1).last?.split(separator: "/", maxSplits: 1).first else { return false }
    var host = String(authority)
    if host.hasPrefix("[") {
        host = String(host.dropFirst().prefix { $0 != "]" })
    } else if let colon = host.lastIndex(of: ":") {
        host = String(host[..<colon])
    }
    return host == "localhost" || host == "::1" || host.hasPrefix("127.")
}

/// Percent-encodes everything but RFC 3986 unreserved characters: form values here, and the
/// Web PubSub client's path segments and query values (as the SDKs encode them).
package func percentEncodeUnreserved(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.utf8.count)
    let hex = Array("0123456789ABCDEF".utf8)
    for byte in s.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            out.unicodeScalars.append("%")
            out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
            out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 0xF)]))
        }
    }
    return out
}

/// A failed request in words: `connect timeout`, `connection refused (...)`, ... (shared with
/// the Web PubSub client).
package func describeHTTPFailure(_ error: any Error) -> String {
    if let e = error as? HTTPClientError {
        switch e {
        case .connectTimeout: return "connect timeout"
        case .deadlineExceeded: return "request timeout"
        case .readTimeout: return "read timeout"
        case .remoteConnectionClosed: return "connection closed by the remote end"
        default: return "\(e)"
        }
    }
    let text = "\(error)"
    if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused (\(text))" }
    return text
}

extension JSONValue {
    /// A number, or a string holding one (managed-identity endpoints write `"expires_on": "1700000000"`).
    var numeric: Double? {
        switch self {
        case .number(let n): Double(n)
        case .string(let s): Double(s)
        default: nil
        }
    }
}

/// Reads a token endpoint's answer: `access_token` with `expires_in` (OAuth2) or `expires_on`
/// (managed identity), and `refresh_in` when given.
func parseToken(_ response: IdentityHTTP.Response, what: String, now: Date = Date()) throws(IdentityError) -> AccessToken {
    guard response.status == 200 else {
        throw IdentityError(.refused, "\(what): HTTP \(response.status)\(errorText(response.json))")
    }
    guard let json = response.json, let token = json["access_token"]?.stringValue, !token.isEmpty else {
        throw IdentityError(.refused, "\(what): the answer has no access_token")
    }
    let expiresOn: Date
    if let on = json["expires_on"]?.numeric {
        expiresOn = Date(timeIntervalSince1970: on)
    } else if let inSeconds = json["expires_in"]?.numeric {
        expiresOn = now.addingTimeInterval(inSeconds)
    } else {
        throw IdentityError(.refused, "\(what): the answer has neither expires_in nor expires_on")
    }
    let refreshOn = json["refresh_in"]?.numeric.map { now.addingTimeInterval($0) }
    return AccessToken(token: token, expiresOn: expiresOn, refreshOn: refreshOn, now: now)
}

/// `: invalid_client: AADSTS7000215: Invalid client secret provided...` from an error answer
/// (Entra ID's `error`/`error_description`, or a managed-identity endpoint's `message`).
func errorText(_ json: JSONValue?) -> String {
    guard let json else { return "" }
    var parts: [String] = []
    if let code = json["error"]?.stringValue { parts.append(code) }
    if let text = json["error_description"]?.stringValue ?? json["message"]?.stringValue ?? json["error"]?["message"]?.stringValue {
        // Entra ID appends trace and correlation ids on new lines; the first line says what is wrong.
        parts.append(String(text.split(separator: "\n").first ?? ""))
    }
    return parts.isEmpty ? "" : ": " + parts.joined(separator: ": ")
}
