package import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization
package import WebPubSub

/// A real HTTP server on a free loopback port that verifies the bearer JWT of each request
/// (HS256 with its access key, `aud` equal to the request's full URL, `exp` in the future) and
/// records method, path, query, headers and body. It answers from a script of responses first,
/// then with the status the Web PubSub service gives for the operation.
package final class RecordingServer: Sendable {
    package struct RecordedRequest: Sendable, CustomStringConvertible {
        package let method: String
        /// As sent: percent-encoded.
        package let rawPath: String
        /// Decoded path segments.
        package let segments: [String]
        /// Decoded, in order; repeated names repeat.
        package let query: [(name: String, value: String)]
        /// Header names lower-cased.
        package let headers: [String: String]
        package let body: [UInt8]
        /// The verified token's claims; nil when it was refused (see `authError`).
        package let claims: JWTClaims?
        package let authError: String?
        /// The full URL the request named, as `aud` must.
        package let url: String
        package let receivedAt: Date

        package func queryValues(_ name: String) -> [String] { query.filter { $0.name == name }.map(\.value) }
        package var bodyText: String { String(decoding: body, as: UTF8.self) }
        package var description: String { "\(method) \(rawPath)" }
    }

    package struct ScriptedResponse: Sendable {
        package var status: Int
        package var headers: [String: String]
        package var body: String

        package init(status: Int, headers: [String: String] = [:], body: String = "") {
            self.status = status
            self.headers = headers
            self.body = body
        }
    }

    package let accessKey: AccessKey
    /// When false the server takes any request (an event handler, say) and sets no `authError`.
    let verifyToken: Bool
    /// Answers a request before the script and the defaults, when it returns a response.
    let responder: (@Sendable (RecordedRequest) -> ScriptedResponse?)?
    private let recorded = Mutex<[RecordedRequest]>([])
    private let script = Mutex<[ScriptedResponse]>([])
    private let server = LoopbackServer()

    package init(
        accessKey: AccessKey = AccessKey("recording-server-key-0123456789ABCDEFGHIJ"), verifyToken: Bool = true,
        responder: (@Sendable (RecordedRequest) -> ScriptedResponse?)? = nil
    ) {
        self.accessKey = accessKey
        self.verifyToken = verifyToken
        self.responder = responder
    }

    package var port: Int { server.port }
    package var endpoint: String { "http://127.0.0.1:\(port)" }
    package var connectionString: String { "Endpoint=http://127.0.0.1;Port=\(port);AccessKey=\(accessKey.value);Version=1.0;" }
    package var requests: [RecordedRequest] { recorded.withLock { $0 } }

    /// Answers the next requests with these, in order, before falling back to the defaults.
    package func enqueue(_ responses: ScriptedResponse...) {
        script.withLock { $0.append(contentsOf: responses) }
    }

    /// Starts listening on `port` (0: a free one; a stopped server can start again on its old
    /// port, as a service back from an outage); returns once the port is known.
    package func start(port: Int = 0) async throws {
        try await server.start(label: "recording-server", port: port) { [self] request in try await self.handle(request) }
    }

    package func stop() async { await server.stop() }

    private func handle(_ request: Request) async throws -> Response {
        var request = request
        let body = try await request.collectBody(upTo: 16 * 1024 * 1024)
        let uri = request.uri.description
        let url = endpoint + uri
        let pathPart = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? uri
        let segments = pathPart.split(separator: "/").map { percentDecode($0) }
        var query: [(String, String)] = []
        if let q = request.uri.query {
            for pair in q.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query.append((percentDecode(parts[0], plusIsSpace: true), parts.count > 1 ? percentDecode(parts[1], plusIsSpace: true) : ""))
            }
        }
        var headers: [String: String] = [:]
        for field in request.headers {
            let name = field.name.canonicalName
            headers[name] = headers[name].map { $0 + ", " + field.value } ?? field.value
        }
        var claims: JWTClaims?
        var authError: String?
        if !verifyToken {
        } else if let auth = headers["authorization"], auth.hasPrefix("Bearer ") {
            do {
                claims = try AccessKeyJWT.verify(String(auth.dropFirst(7)), keys: [accessKey], leeway: 5) { $0 == url }
            } catch {
                authError = error.message
            }
        } else {
            authError = "no bearer token"
        }
        let recordedRequest = RecordedRequest(
            method: request.method.rawValue, rawPath: pathPart, segments: segments, query: query, headers: headers,
            body: Array(body.readableBytesView), claims: claims, authError: authError, url: url, receivedAt: Date())
        recorded.withLock { $0.append(recordedRequest) }
        if let authError {
            return Self.response(ScriptedResponse(status: 401, body: #"{"code":"Unauthorized","message":"\#(authError)"}"#))
        }
        if let responder, let answer = responder(recordedRequest) {
            return Self.response(answer)
        }
        if let scripted = script.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
            return Self.response(scripted)
        }
        let status = Self.defaultStatus(method: request.method.rawValue, segments: segments)
        // A page of group members is the one success answer with a body.
        let isListing = request.method.rawValue == "GET" && segments.last == "connections"
        return Self.response(ScriptedResponse(status: status, body: isListing ? #"{"value":[]}"# : ""))
    }

    /// What the service answers on success, by operation.
    static func defaultStatus(method: String, segments: [String]) -> Int {
        let last = segments.last ?? ""
        switch method {
        case "POST":
            if last == ":send" { return 202 }
            if last == ":closeConnections" { return 204 }
            return 200
        case "DELETE": return 204
        default: return 200
        }
    }

    static func response(_ scripted: ScriptedResponse) -> Response {
        var fields = HTTPFields()
        for (name, value) in scripted.headers {
            if let field = HTTPField.Name(name) { fields[field] = value }
        }
        if !scripted.body.isEmpty, fields[.contentType] == nil { fields[.contentType] = "application/json" }
        return Response(
            status: .init(code: scripted.status), headers: fields,
            body: scripted.body.isEmpty ? ResponseBody() : ResponseBody(byteBuffer: ByteBuffer(string: scripted.body)))
    }
}

package struct RecordingServerError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// Runs `body` with a started server, and stops it after.
package func withRecordingServer<T>(_ body: (RecordingServer) async throws -> T) async throws -> T {
    let server = RecordingServer()
    try await server.start()
    do {
        let result = try await body(server)
        await server.stop()
        return result
    } catch {
        await server.stop()
        throw error
    }
}
