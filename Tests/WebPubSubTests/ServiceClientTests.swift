import BridgeJSON
import BridgeTestSupport
import Foundation
import NIOCore
import NIOHTTP1
import Testing
import WebPubSubProtocol

@testable import WebPubSub

#if canImport(Glibc)
import Glibc
#endif

/// The REST client against a real HTTP server that checks each request's JWT.
@Suite struct ServiceClientTests {
    func client(_ server: RecordingServer) throws -> WebPubSubServiceClient {
        WebPubSubServiceClient(connectionString: try ConnectionString(parsing: server.connectionString))
    }

    /// The same calls, in the same order, as `Tests/python/sdk_conformance.py operations`.
    static func callEveryOperation(_ c: WebPubSubServiceClient, hub: String) async throws {
        try await c.sendToAll(
            hub: hub, payload: ByteBuffer(string: #"{"a": 1, "b": [true, null]}"#), contentType: "application/json",
            excluded: ["c1", "c2"], filter: "userId ne 'bot'")
        try await c.sendToGroup(
            hub: hub, group: "room/1 x", payload: ByteBuffer(string: "hello"), contentType: "text/plain", excluded: ["c1"],
            filter: "'vip' in groups")
        try await c.sendToUser(
            hub: hub, userId: "user@example.com", payload: ByteBuffer(bytes: [0, 1, 255]), contentType: "application/octet-stream",
            filter: "connectionId ne 'c9'")
        try await c.sendToConnection(hub: hub, connectionId: "conn-1", payload: ByteBuffer(string: "hi there"), contentType: "text/plain")
        try await c.addConnectionToGroup(hub: hub, group: "g1", connectionId: "conn-1")
        try await c.removeConnectionFromGroup(hub: hub, group: "g1", connectionId: "conn-1")
        try await c.removeConnectionFromAllGroups(hub: hub, connectionId: "conn-1")
        try await c.addUserToGroup(hub: hub, group: "g1", userId: "user-1")
        try await c.removeUserFromGroup(hub: hub, group: "g1", userId: "user-1")
        try await c.removeUserFromAllGroups(hub: hub, userId: "user-1")
        try await c.closeAllConnections(hub: hub, excluded: ["c1"], reason: "bye all")
        try await c.closeGroupConnections(hub: hub, group: "g1", excluded: ["c2"], reason: "bye group")
        try await c.closeUserConnections(hub: hub, userId: "user-1", excluded: ["c3"], reason: "bye user")
        try await c.closeConnection(hub: hub, connectionId: "conn-1", reason: "bye conn")
        _ = try await c.connectionExists(hub: hub, connectionId: "conn-1")
        _ = try await c.groupExists(hub: hub, group: "g1")
        _ = try await c.userExists(hub: hub, userId: "user-1")
        try await c.grantPermission(hub: hub, permission: .sendToGroup, connectionId: "conn-1", targetName: "g1")
        try await c.revokePermission(hub: hub, permission: .joinLeaveGroup, connectionId: "conn-1", targetName: "g1")
        _ = try await c.checkPermission(hub: hub, permission: .sendToGroup, connectionId: "conn-1", targetName: "g1")
        _ = try await c.listConnections(hub: hub, group: "g1", top: 5)
    }

    @Test func everyOperationIsSignedAndShapedAsTheService() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            try await Self.callEveryOperation(c, hub: "chat")
            try await c.shutdown()
            let r = server.requests
            #expect(r.count == 21)
            for request in r {
                #expect(request.authError == nil, "\(request): \(request.authError ?? "")")
                #expect(request.queryValues("api-version") == ["2024-12-01"])
            }
            #expect(r[0].method == "POST" && r[0].segments == ["api", "hubs", "chat", ":send"])
            #expect(r[0].queryValues("excluded") == ["c1", "c2"])
            #expect(r[0].queryValues("filter") == ["userId ne 'bot'"])
            #expect(r[0].headers["content-type"] == "application/json")
            #expect(r[1].rawPath == "/api/hubs/chat/groups/room%2F1%20x/:send")
            #expect(r[1].segments[4] == "room/1 x")
            #expect(r[1].bodyText == "hello" && r[1].headers["content-type"] == "text/plain")
            #expect(r[2].body == [0, 1, 255] && r[2].headers["content-type"] == "application/octet-stream")
            #expect(r[3].segments == ["api", "hubs", "chat", "connections", "conn-1", ":send"])
            #expect(r[4].method == "PUT" && r[4].segments == ["api", "hubs", "chat", "groups", "g1", "connections", "conn-1"])
            #expect(r[6].method == "DELETE" && r[6].segments == ["api", "hubs", "chat", "connections", "conn-1", "groups"])
            #expect(r[10].segments.last == ":closeConnections" && r[10].queryValues("reason") == ["bye all"])
            #expect(r[14].method == "HEAD")
            #expect(r[17].method == "PUT" && r[17].segments == ["api", "hubs", "chat", "permissions", "sendToGroup", "connections", "conn-1"])
            #expect(r[17].queryValues("targetName") == ["g1"])
            #expect(r[20].method == "GET" && r[20].queryValues("top") == ["5"])
        }
    }

    @Test func messageTTLGoesInTheQuery() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            try await c.sendToConnection(
                hub: "h", connectionId: "c", payload: ByteBuffer(string: "x"), contentType: "text/plain", messageTTLSeconds: 10)
            try await c.sendToGroup(hub: "h", group: "g", payload: ByteBuffer(string: "x"), contentType: "text/plain", messageTTLSeconds: 300)
            #expect(server.requests.map { $0.queryValues("messageTtlSeconds") } == [["10"], ["300"]])
            try await c.shutdown()
        }
    }

    @Test func existsMapsStatus() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            server.enqueue(.init(status: 404), .init(status: 200))
            #expect(try await c.groupExists(hub: "h", group: "g") == false)
            #expect(try await c.userExists(hub: "h", userId: "u") == true)
            try await c.shutdown()
        }
    }

    @Test func metadataGoesInHeaders() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            try await c.sendToGroup(
                hub: "h", group: "g", payload: ByteBuffer(string: "x"), contentType: "text/plain",
                metadata: [MetadataEntry(key: "traceparent", value: "00-abc-01"), MetadataEntry(key: "src", value: "kafka")])
            let request = try #require(server.requests.first)
            #expect(request.headers["x-webpubsub-metadata-traceparent"] == "00-abc-01" && request.headers["x-webpubsub-metadata-src"] == "kafka")
            try await c.shutdown()
        }
    }

    /// The service answers 204 where older examples said 200 (`:addToGroups`, the health check),
    /// and may answer 200 for a send: any 2xx is success; other statuses are not.
    @Test func any2xxIsSuccessAndNothingElse() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            server.enqueue(.init(status: 204), .init(status: 204), .init(status: 204), .init(status: 200), .init(status: 201))
            try await c.addConnectionsToGroups(hub: "h", groups: ["g"], filter: "userId eq 'a'")
            try await c.removeConnectionsFromGroups(hub: "h", groups: ["g"], filter: "userId eq 'a'")
            #expect(try await c.serviceIsHealthy())
            try await c.sendToAll(hub: "h", payload: ByteBuffer(string: "x"), contentType: "text/plain")
            try await c.grantPermission(hub: "h", permission: .sendToGroup, connectionId: "c1")
            server.enqueue(.init(status: 404), .init(status: 302), .init(status: 404))
            #expect(try await c.serviceIsHealthy() == false)
            await #expect(throws: WebPubSubError.self) {
                try await c.addConnectionToGroup(hub: "h", group: "g", connectionId: "c1")
            }
            await #expect(throws: WebPubSubError.self, "404 answers only the HEAD checks") {
                try await c.sendToAll(hub: "h", payload: ByteBuffer(string: "x"), contentType: "text/plain")
            }
            try await c.shutdown()
        }
    }

    @Test func refusedRequestCarriesStatusBodyAndRetryAfter() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            server.enqueue(
                .init(status: 429, headers: ["Retry-After": "2"], body: #"{"error":{"code":"TooManyRequests","message":"slow down"}}"#),
                .init(status: 400, headers: ["x-ms-error-code": "InvalidFilter"], body: #"{"code":"BadRequest","message":"bad filter"}"#))
            do {
                try await c.sendToAll(hub: "h", payload: ByteBuffer(string: "x"), contentType: "text/plain")
                Issue.record("expected a 429")
            } catch let error as WebPubSubError {
                #expect(error.status == 429)
                #expect(error.errorCode == "TooManyRequests")
                #expect(error.message == "slow down")
                #expect(error.retryAfter == .seconds(2))
                #expect(error.isRetryable)
            }
            do {
                try await c.sendToAll(hub: "h", payload: ByteBuffer(string: "x"), contentType: "text/plain")
                Issue.record("expected a 400")
            } catch let error as WebPubSubError {
                #expect(error.status == 400)
                #expect(error.errorCode == "InvalidFilter")
                #expect(error.body?.contains("bad filter") == true)
                #expect(!error.isRetryable)
            }
            try await c.shutdown()
        }
    }

    @Test func tokensAreCachedPerURL() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            for _ in 0..<3 { try await c.sendToGroup(hub: "h", group: "g", payload: ByteBuffer(string: "x"), contentType: "text/plain") }
            try await c.sendToGroup(hub: "h", group: "other", payload: ByteBuffer(string: "x"), contentType: "text/plain")
            let auth = server.requests.map { $0.headers["authorization"] ?? "" }
            #expect(auth[0] == auth[1] && auth[1] == auth[2])
            #expect(auth[3] != auth[0])
            try await c.shutdown()
        }
    }

    @Test func connectionRefusedIsARetryableTransportError() async throws {
        // A port bound and not listening: it refuses, and no other test's server can take it.
        let (port, socket) = try TestEnvironment.refusingPort()
        defer { close(socket) }
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(port);AccessKey=k;Version=1.0;")
        let c = WebPubSubServiceClient(connectionString: cs)
        do {
            try await c.sendToAll(hub: "h", payload: ByteBuffer(string: "x"), contentType: "text/plain")
            Issue.record("expected a failure")
        } catch {
            #expect(error.kind == .transport)
            #expect(error.isRetryable)
        }
        try await c.shutdown()
    }

    @Test func retryAfterForms() {
        let now = Date(timeIntervalSince1970: 1_445_412_480)  // Wed, 21 Oct 2015 07:28:00 GMT
        #expect(WebPubSubServiceClient.retryAfter(HTTPHeaders([("Retry-After", "Wed, 21 Oct 2015 07:28:10 GMT")]), now: now) == .seconds(10))
        #expect(WebPubSubServiceClient.retryAfter(HTTPHeaders([("Retry-After", "3")])) == .seconds(3))
        #expect(WebPubSubServiceClient.retryAfter(HTTPHeaders([("retry-after-ms", "1500")])) == .milliseconds(1500))
        #expect(WebPubSubServiceClient.retryAfter(HTTPHeaders([("Retry-After", "soon")])) == nil)
    }
}
