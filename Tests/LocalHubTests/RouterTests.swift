import AsyncHTTPClient
import BridgeJSON
import Foundation
import HTTPGuards
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing
import WebPubSub

@testable import LocalHub

/// The hub's REST routes in memory (Hummingbird's router test framework, no sockets): which
/// path reaches which operation, and what is refused before any route runs. The live tests and
/// the official SDKs cover the same API over real HTTP.
@Suite struct RouterTests {
    static let key = AccessKey("router-test-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123")

    func withRouter(_ body: @Sendable (any TestClientProtocol, LocalHub) async throws -> Void) async throws {
        var configuration = LocalHubConfiguration(accessKeys: [Self.key])
        configuration.port = 0
        let hub = LocalHub(configuration: configuration, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let app = Application(router: hub.makeRouter())
        // The hub is not run: the HTTP client it would close at its end is closed here.
        do {
            try await app.test(.router) { client in try await body(client, hub) }
        } catch {
            try await hub.upstreamClient.shutdown()
            throw error
        }
        try await hub.upstreamClient.shutdown()
    }

    /// A REST request signed for its path, as the SDKs sign them.
    func signed(_ path: String) -> HTTPFields {
        let pathOnly = String(path.prefix { $0 != "?" })
        let token = AccessKeyJWT.restToken(url: "http://localhost\(pathOnly)", key: Self.key, expiry: Date().addingTimeInterval(300))
        return [.authorization: "Bearer \(token)"]
    }

    func errorCode(_ response: TestResponse) -> String? { response.headers[HTTPField.Name("x-ms-error-code")!] }

    @Test func everyResourceHasItsRoute() async throws {
        try await withRouter { client, _ in
            let v = "?api-version=2024-12-01"
            let cases: [(HTTPRequest.Method, String, ByteBuffer?, HTTPResponse.Status)] = [
                (.post, "/api/hubs/chat/:send", ByteBuffer(string: "hi"), .accepted),
                (.post, "/api/hubs/chat/groups/room/:send", ByteBuffer(string: "hi"), .accepted),
                (.post, "/api/hubs/chat/users/alice/:send", ByteBuffer(string: "hi"), .accepted),
                (.post, "/api/hubs/chat/connections/c1/:send", ByteBuffer(string: "hi"), .accepted),
                (.post, "/api/hubs/chat/:closeConnections", nil, .noContent),
                (.post, "/api/hubs/chat/groups/room/:closeConnections", nil, .noContent),
                (.post, "/api/hubs/chat/users/alice/:closeConnections", nil, .noContent),
                (.delete, "/api/hubs/chat/connections/c1", nil, .noContent),
                (.head, "/api/hubs/chat/connections/c1", nil, .notFound),
                (.head, "/api/hubs/chat/groups/room", nil, .notFound),
                (.put, "/api/hubs/chat/users/alice/groups/room", nil, .ok),
                (.head, "/api/hubs/chat/users/alice", nil, .notFound),
                (.delete, "/api/hubs/chat/users/alice/groups/room", nil, .noContent),
                (.delete, "/api/hubs/chat/users/alice/groups", nil, .noContent),
                (.put, "/api/hubs/chat/groups/room/connections/c1", nil, .notFound),
                (.delete, "/api/hubs/chat/groups/room/connections/c1", nil, .noContent),
                (.delete, "/api/hubs/chat/connections/c1/groups", nil, .noContent),
                (.get, "/api/hubs/chat/groups/room/connections", nil, .ok),
                (.put, "/api/hubs/chat/permissions/sendToGroup/connections/c1", nil, .notFound),
                (.head, "/api/hubs/chat/permissions/sendToGroup/connections/c1", nil, .notFound),
                (.post, "/api/hubs/chat/:generateToken", nil, .ok),
                (.post, "/api/hubs/chat/:addToGroups", ByteBuffer(string: #"{"groups":["a"],"filter":"userId eq 'x'"}"#), .ok),
            ]
            for (method, path, body, status) in cases {
                var headers = signed(path)
                if body != nil { headers[.contentType] = "text/plain" }
                if path.hasSuffix(":addToGroups") { headers[.contentType] = "application/json" }
                let response = try await client.execute(uri: path + v, method: method, headers: headers, body: body)
                #expect(response.status == status, "\(method) \(path): \(String(buffer: response.body))")
            }
        }
    }

    /// An operation segment the service does not have, or a path no route takes, is a 404 with
    /// the service's error body; so is a known path with another method.
    @Test func unknownOperationsAndPathsAre404WithAReason() async throws {
        try await withRouter { client, _ in
            for path in ["/api/hubs/chat/:teleport", "/api/hubs/chat/groups/room/:generateToken", "/api/hubs/chat/nothing/here", "/api/nothing"] {
                let response = try await client.execute(uri: path + "?api-version=1", method: .post, headers: signed(path))
                #expect(response.status == .notFound, "\(path)")
                #expect(errorCode(response) == "NotFound", "\(path)")
                #expect(String(buffer: response.body).contains("no such operation"), "\(path)")
            }
            let page = try await client.execute(uri: "/nothing", method: .get)
            #expect(page.status == .notFound && String(buffer: page.body).contains("no such resource"))
        }
    }

    @Test func generateTokenTakesTheClientTypesTheServiceKnows() async throws {
        try await withRouter { client, _ in
            let path = "/api/hubs/chat/:generateToken"
            for (type, audience) in [
                ("mqtt", "/clients/mqtt/hubs/chat"), ("SocketIO", "/clients/socketio/hubs/chat"), ("Default", "/client/hubs/chat"),
            ] {
                let response = try await client.execute(
                    uri: path + "?api-version=2024-12-01&clientType=\(type)", method: .post, headers: signed(path))
                #expect(response.status == .ok, "\(type)")
                let token = try #require(try JSONValue.parse(response.body.readableBytesView)["token"]?.stringValue)
                #expect(try AccessKeyJWT.verify(token, keys: [Self.key]).audience?.hasSuffix(audience) == true, "\(type)")
            }
            let bad = try await client.execute(uri: path + "?api-version=2024-12-01&clientType=stomp", method: .post, headers: signed(path))
            #expect(bad.status == .badRequest && String(buffer: bad.body).contains("clientType must be one of Default, MQTT, SocketIO"))
        }
    }

    /// Before any route: the token, then api-version; the hub name, filter and TTL before the operation.
    @Test func refusalsComeBeforeTheRoute() async throws {
        try await withRouter { client, _ in
            let path = "/api/hubs/chat/:send"
            let anonymous = try await client.execute(uri: path + "?api-version=1", method: .post, body: ByteBuffer(string: "x"))
            #expect(anonymous.status == .unauthorized)
            // Signed for another path: refused.
            let elsewhere = try await client.execute(uri: path + "?api-version=1", method: .post, headers: signed("/api/hubs/other/:send"))
            #expect(elsewhere.status == .unauthorized)
            let noVersion = try await client.execute(uri: path, method: .post, headers: signed(path))
            #expect(noVersion.status == .badRequest && String(buffer: noVersion.body).contains("api-version"))
            let badHub = "/api/hubs/9chat/:send"
            let hubRefused = try await client.execute(uri: badHub + "?api-version=1", method: .post, headers: signed(badHub))
            #expect(hubRefused.status == .badRequest)
            let badFilter = try await client.execute(uri: path + "?api-version=1&filter=userId%20eq", method: .post, headers: signed(path))
            #expect(badFilter.status == .badRequest && String(buffer: badFilter.body).contains("Invalid filter"))
            let badTTL = try await client.execute(uri: path + "?api-version=1&messageTtlSeconds=301", method: .post, headers: signed(path))
            #expect(badTTL.status == .badRequest)
            let health = try await client.execute(uri: "/api/health", method: .get, headers: signed("/api/health"))
            #expect(health.status == .ok)
            let postHealth = try await client.execute(uri: "/api/health", method: .post, headers: signed("/api/health"))
            #expect(postHealth.status == .methodNotAllowed)
        }
    }

    /// The router skips empty path segments, so the gate does too: `//api/...` is the API and
    /// needs its token like `/api/...` (a stranger could otherwise mint client tokens).
    @Test func emptySegmentsDoNotBypassTheToken() async throws {
        try await withRouter { client, _ in
            for path in ["//api/hubs/chat/:generateToken", "/api//hubs/chat/:generateToken", "//api//hubs//chat//:closeConnections"] {
                let response = try await client.execute(uri: path + "?api-version=1", method: .post)
                #expect(response.status == .unauthorized, "\(path): \(response.status)")
            }
            let permission = "/api/hubs/chat/permissions/sendToGroup/connections/c1"
            #expect(
                try await client.execute(uri: permission + "?api-version=1", method: .get, headers: signed(permission)).status == .methodNotAllowed)
            // A plain GET of the WebSocket endpoint says what it is, at any of its paths.
            for path in ["/client", "/client/hubs/chat"] {
                let response = try await client.execute(uri: path, method: .get)
                #expect(response.status == .badRequest && String(buffer: response.body).contains("WebSocket endpoint"), "\(path)")
            }
        }
    }

    /// Path parameters are percent-decoded once: `a%2Fb` is the group `a/b`, and a name the
    /// service cannot have is refused however it is spelled.
    @Test func parametersArePercentDecodedAndChecked() async throws {
        try await withRouter { client, hub in
            let slash = "/api/hubs/chat/users/alice/groups/a%2Fb"
            #expect(try await client.execute(uri: slash + "?api-version=1", method: .put, headers: signed(slash)).status == .ok)
            #expect(hub.registry.groups(ofUser: "alice", hub: "chat") == ["a/b"])
            let dots = "/api/hubs/chat/users/alice/groups/%2E%2E"
            let refused = try await client.execute(uri: dots + "?api-version=1", method: .put, headers: signed(dots))
            #expect(refused.status == .badRequest, "\(String(buffer: refused.body))")
        }
    }
}

@Suite struct BearerTokenTests {
    @Test(
        arguments: [
            ("Bearer abc.def", "abc.def"), ("bearer abc", "abc"), ("BEARER  abc", "abc"), ("Bearer ", nil), ("Bearer", nil), ("Bearerabc", nil),
            ("Basic abc", nil),
        ] as [(String, String?)])
    func readsTheTokenOfABearerHeader(header: String, token: String?) {
        let fields: HTTPFields = [.authorization: header]
        #expect(fields.bearerToken == token)
    }

    @Test func noHeaderNoToken() {
        #expect(HTTPFields().bearerToken == nil)
    }
}
