import AsyncHTTPClient
import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import NIOCore
import NIOHTTP1
import Testing
import WebPubSub
import WebPubSubProtocol

@Suite struct RESTAgainstHubTests {
    @Test func ourClientDrivesTheHub() async throws {
        try await withHub { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            let (a, aId) = try await connectClient(cs, user: "alice", groups: ["news"])
            let (b, bId) = try await connectClient(cs, user: "bob", subprotocol: "json.reliable.webpubsub.azure.v1")
            let alice = try #require(aId)
            let bob = try #require(bId)

            try await client.sendToGroup(hub: "chat", group: "news", payload: ByteBuffer(string: #"{"n": 1}"#), contentType: "application/json")
            let m = await a.expect(type: "message")
            #expect(m?["from"] == .string("group") && m?["group"] == .string("news"))
            #expect(m?["dataType"] == .string("json") && m?["data"] == .object([("n", .number("1"))]))

            try await client.sendToUser(hub: "chat", userId: "bob", payload: ByteBuffer(string: "hi bob"), contentType: "text/plain")
            let r = await b.expect(type: "message")
            #expect(r?["from"] == .string("server") && r?["data"] == .string("hi bob") && r?["sequenceId"] == .number("1"))

            try await client.sendToAll(
                hub: "chat", payload: ByteBuffer(bytes: [1, 2, 3]), contentType: "application/octet-stream", filter: "userId eq 'alice'")
            let bin = await a.expect(type: "message")
            #expect(bin?["dataType"] == .string("binary") && bin?["data"] == .string("AQID"))

            #expect(try await client.connectionExists(hub: "chat", connectionId: alice))
            #expect(try await client.userExists(hub: "chat", userId: "bob"))
            #expect(try await client.groupExists(hub: "chat", group: "news"))
            #expect(try await !client.groupExists(hub: "chat", group: "empty"))
            try await client.addConnectionToGroup(hub: "chat", group: "g2", connectionId: bob)
            #expect(try await client.listConnections(hub: "chat", group: "g2").map { "\($0.connectionId) \($0.userId ?? "")" } == ["\(bob) bob"])
            try await client.addConnectionsToGroups(hub: "chat", groups: ["filtered"], filter: "userId eq 'alice'")
            #expect(try await client.listConnections(hub: "chat", group: "filtered").map(\.connectionId) == [alice])
            try await client.removeConnectionsFromGroups(hub: "chat", groups: ["filtered"], filter: "userId eq 'alice'")
            #expect(try await !client.groupExists(hub: "chat", group: "filtered"))
            try await client.grantPermission(hub: "chat", permission: .sendToGroup, connectionId: alice, targetName: "news")
            #expect(try await client.checkPermission(hub: "chat", permission: .sendToGroup, connectionId: alice, targetName: "news"))
            #expect(try await !client.checkPermission(hub: "chat", permission: .joinLeaveGroup, connectionId: alice))
            #expect(try await client.serviceIsHealthy())
            let token = try await client.generateClientToken(hub: "chat", userId: "zed", roles: ["webpubsub.joinLeaveGroup"], minutesToExpire: 5)
            let claims = try AccessKeyJWT.verify(token, keys: [cs.accessKey])
            #expect(claims.subject == "zed" && claims.roles == ["webpubsub.joinLeaveGroup"])

            try await client.closeConnection(hub: "chat", connectionId: alice, reason: "done")
            let bye = await a.expect(type: "system", event: "disconnected")
            #expect(bye?["message"] == .string("done"))
            #expect(await a.next() == .closed(1000))
            #expect(try await !client.connectionExists(hub: "chat", connectionId: alice))
            await b.close()
        }
    }

    @Test func refusesBadRequests() async throws {
        try await withHub { hub, cs in
            let good = WebPubSubServiceClient(connectionString: cs)
            let wrongKey = WebPubSubServiceClient(connectionString: try ConnectionString(endpoint: cs.endpoint, accessKey: AccessKey("wrong")))
            await #expect(throws: WebPubSubError.self) {
                try await wrongKey.sendToAll(hub: "chat", payload: ByteBuffer(string: "x"), contentType: "text/plain")
            }
            do {
                try await good.sendToAll(hub: "chat", payload: ByteBuffer(string: "{oops"), contentType: "application/json")
                Issue.record("invalid JSON must be refused")
            } catch let error as WebPubSubError {
                #expect(error.status == 400)
            }
            do {
                try await good.sendToAll(hub: "chat", payload: ByteBuffer(string: "x"), contentType: "text/plain", filter: "userId eq")
                Issue.record("a bad filter must be refused")
            } catch let error as WebPubSubError {
                #expect(error.status == 400 && error.message.contains("(Parameter 'filter')"))
            }
            do {
                try await good.addConnectionToGroup(hub: "chat", group: "g", connectionId: "nobody")
                Issue.record("an unknown connection must be refused")
            } catch let error as WebPubSubError {
                #expect(error.status == 404 && error.errorCode == "NotFound")
            }
            try await good.shutdown()
            try await wrongKey.shutdown()
            _ = hub
        }
    }

    @Test func rateLimitAnswers429WithRetryAfter() async throws {
        try await withHub({ $0.rateLimit = 3 }) { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            var throttled: [WebPubSubError] = []
            let started = ContinuousClock.now
            for _ in 0..<20 {
                do { try await client.sendToAll(hub: "chat", payload: ByteBuffer(string: "x"), contentType: "text/plain") } catch let error
                    as WebPubSubError
                { throttled.append(error) }
            }
            let elapsed = ContinuousClock.now - started
            try await client.shutdown()
            // A bucket of 3 that refills 3 a second accepts at most 3 + 3 x elapsed of the 20.
            let accepted = 20 - throttled.count
            #expect(!throttled.isEmpty)
            #expect(Double(accepted) <= 3 + 3 * (elapsed / .seconds(1)) + 1)
            // retry-after-ms says when the bucket has a token again (a third of a second at most here).
            #expect(throttled.allSatisfy { $0.status == 429 && $0.retryAfter.map { $0 > .zero && $0 <= .milliseconds(334) } == true })
        }
    }
}

@Suite struct ClientProtocolTests {
    @Test func joinSendAckAndPermissions() async throws {
        try await withHub { _, cs in
            let (a, _) = try await connectClient(cs, user: "a", roles: ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.room"])
            let (b, _) = try await connectClient(cs, user: "b")
            a.send(#"{"type":"joinGroup","group":"room","ackId":1}"#)
            #expect(await a.expect(type: "ack") == (try JSONValue(parsing: #"{"type":"ack","ackId":1,"success":true}"#)))
            a.send(#"{"type":"joinGroup","group":"room","ackId":1}"#)
            #expect(await a.expect(type: "ack")?["error"]?["name"] == .string("Duplicate"))
            b.send(#"{"type":"joinGroup","group":"room","ackId":7}"#)
            #expect(await b.expect(type: "ack")?["error"]?["name"] == .string("Forbidden"))
            a.send(#"{"type":"sendToGroup","group":"other","data":"x","dataType":"text","ackId":2}"#)
            #expect(await a.expect(type: "ack")?["error"]?["name"] == .string("Forbidden"))
            a.send(#"{"type":"sendToGroup","group":"room","data":{"x":1},"ackId":3}"#)
            let echo = await a.expect(type: "message")
            #expect(echo?["fromUserId"] == .string("a") && echo?["data"]?["x"] == .number("1"))
            #expect(await a.expect(type: "ack")?["ackId"] == .number("3"))
            a.send(#"{"type":"sendToGroup","group":"room","data":"quiet","dataType":"text","noEcho":true,"ackId":4}"#)
            #expect(await a.expect(type: "ack")?["success"] == .bool(true))
            #expect(await a.next(timeout: .milliseconds(200)) == nil)
            a.send(#"{"type":"ping"}"#)
            #expect(await a.expect(type: "pong") != nil)
            await a.close()
            await b.close()
        }
    }

    @Test func plainWebSocketsGetRawFrames() async throws {
        try await withHub { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            let (plain, _) = try await connectClient(cs, user: "p", groups: ["g"], subprotocol: nil)
            #expect(try await eventually { try await client.userExists(hub: "chat", userId: "p") })
            try await client.sendToGroup(hub: "chat", group: "g", payload: ByteBuffer(string: #"{"a":1}"#), contentType: "application/json")
            try await client.sendToGroup(hub: "chat", group: "g", payload: ByteBuffer(string: "text"), contentType: "text/plain")
            try await client.sendToGroup(hub: "chat", group: "g", payload: ByteBuffer(bytes: [9, 8]), contentType: "application/octet-stream")
            #expect(await plain.next() == .text(#"{"a":1}"#))
            #expect(await plain.next() == .text("text"))
            #expect(await plain.next() == .binary([9, 8]))
            // sendToGroup mode: each frame is published to the group.
            let (listener, _) = try await connectClient(cs, user: "l", groups: ["room"])
            let (publisher, _) = try await connectClient(
                cs, user: "pub", roles: ["webpubsub.sendToGroup.room"], subprotocol: nil, extraQuery: "&webpubsub_mode=sendToGroup&group=room")
            #expect(try await eventually { try await client.userExists(hub: "chat", userId: "pub") })
            publisher.send("from a plain socket")
            let got = await listener.expect(type: "message")
            #expect(got?["data"] == .string("from a plain socket") && got?["fromUserId"] == .string("pub"))
            try await client.shutdown()
        }
    }

    @Test func badFramesCloseOnlyTheirConnection() async throws {
        try await withHub { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            let (bystander, _) = try await connectClient(cs, user: "ok", groups: ["g"])
            let cases: [(String, (TestWebSocket) -> Void)] = [
                ("not JSON", { $0.send("{not json") }),
                ("unknown type", { $0.send(#"{"type":"teleport"}"#) }),
                ("binary frame", { $0.send(binary: [1, 2, 3]) }),
                ("bad ackId", { $0.send(#"{"type":"joinGroup","group":"g","ackId":-1}"#) }),
            ]
            for (name, misbehave) in cases {
                let (bad, _) = try await connectClient(cs, user: "bad")
                misbehave(bad)
                let bye = await bad.expect(type: "system", event: "disconnected")
                #expect(bye?["message"]?.stringValue?.hasPrefix("Invalid message") == true, "\(name)")
                #expect(await bad.next() == .closed(1000), "\(name)")
            }
            let (big, _) = try await connectClient(cs, user: "big")
            big.send(#"{"type":"event","event":"e","dataType":"text","data":""# + String(repeating: "x", count: 1_100_000) + #""}"#)
            #expect(await big.next() == .closed(1009))
            // The hub and the other connection are fine.
            try await client.sendToGroup(hub: "chat", group: "g", payload: ByteBuffer(string: "still here"), contentType: "text/plain")
            #expect(await bystander.expect(type: "message")?["data"] == .string("still here"))
            try await client.shutdown()
        }
    }

    @Test func invalidTokensAre401() async throws {
        try await withHub { _, cs in
            let now = Date()
            let expired = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "u", roles: [], groups: [], expiresIn: .seconds(60),
                now: now.addingTimeInterval(-3600))
            let wrongKey = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: AccessKey("other"), userId: "u", roles: [], groups: [], expiresIn: .seconds(60))
            let wrongHub = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "other", key: cs.accessKey, userId: "u", roles: [], groups: [], expiresIn: .seconds(60))
            let chatURL = cs.endpoint.replacingOccurrences(of: "http://", with: "ws://") + "/client/hubs/chat"
            for url in [expired.url, wrongKey.url, chatURL + "?access_token=" + wrongHub.token, chatURL + "?access_token=garbage", chatURL] {
                await #expect(throws: (any Error).self, "\(url)") { _ = try await TestWebSocket.connect(url, subprotocol: "json.webpubsub.azure.v1") }
                // The refused upgrade is answered with 401 and the reason.
                let http = HTTPClient(eventLoopGroupProvider: .singleton)
                var request = HTTPClientRequest(url: url.replacingOccurrences(of: "ws://", with: "http://"))
                request.headers.add(contentsOf: [
                    ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ])
                let response = try await http.execute(request, timeout: .seconds(10))
                let body = String(buffer: try await response.body.collect(upTo: 65536))
                #expect(response.status.code == 401, "\(url): \(body)")
                try await http.shutdown()
            }
        }
    }

    /// `webpubsub.joinLeaveGroups.{pattern}` and `webpubsub.sendToGroups.{pattern}` in a token:
    /// the hub checks groups against them; an invalid pattern grants nothing.
    @Test func wildcardRolesGrantTheGroupsTheyMatch() async throws {
        try await withHub { _, cs in
            let roles = ["webpubsub.joinLeaveGroups.room.*", "webpubsub.sendToGroups.room.**", "webpubsub.joinLeaveGroups.bad\\x"]
            let (socket, _) = try await connectClient(cs, user: "w", roles: roles)
            func ack(_ frame: String) async -> JSONValue? {
                socket.send(frame)
                return await socket.expect(type: "ack")
            }
            #expect(await ack(#"{"type":"joinGroup","group":"room.1","ackId":1}"#)?["success"] == .bool(true))
            #expect(await ack(#"{"type":"joinGroup","group":"room.1.2","ackId":2}"#)?["error"]?["name"] == .string("Forbidden"), "* stops at a dot")
            #expect(await ack(#"{"type":"joinGroup","group":"lobby","ackId":3}"#)?["error"]?["name"] == .string("Forbidden"))
            #expect(await ack(#"{"type":"joinGroup","group":"badx","ackId":4}"#)?["error"]?["name"] == .string("Forbidden"), "invalid: skipped")
            #expect(
                await ack(#"{"type":"sendToGroup","group":"room.1.2","dataType":"text","data":"hi","ackId":5}"#)?["success"] == .bool(true),
                "** crosses dots")
            #expect(
                await ack(#"{"type":"sendToGroup","group":"Room.1","dataType":"text","data":"hi","ackId":6}"#)?["error"]?["name"]
                    == .string("Forbidden"), "case-sensitive")
        }
    }

    /// A reliable client that does not come back within the grace is ended then; one that comes
    /// back in time keeps its connection id.
    @Test func anAwaySessionEndsWhenTheGracePasses() async throws {
        try await withHub({ $0.reconnectGrace = .seconds(1) }) { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            let (away, awayId) = try await connectClient(cs, user: "a", subprotocol: "json.reliable.webpubsub.azure.v1")
            let id = try #require(awayId)
            await away.close(code: 1001)
            #expect(try await client.connectionExists(hub: "chat", connectionId: id), "kept for the grace")
            let ended = try await eventually(timeout: .seconds(10)) { try await !client.connectionExists(hub: "chat", connectionId: id) }
            #expect(ended, "ended once the grace passed")
        }
    }

    /// `messageTtlSeconds`: a message kept for a reliable client that is away is dropped once its
    /// TTL passed, and the others are replayed when it comes back; `ttlSeconds` out of range is refused.
    @Test func expiredMessagesAreNotReplayed() async throws {
        try await withHub({ $0.reconnectGrace = .seconds(60) }) { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            let access = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "r", roles: ["webpubsub.sendToGroup"], groups: ["g"],
                expiresIn: .seconds(600))
            let first = try await TestWebSocket.connect(access.url, subprotocol: "json.reliable.webpubsub.azure.v1")
            let connected = try #require(await first.expect(type: "system", event: "connected"))
            let id = try #require(connected["connectionId"]?.stringValue)
            let token = try #require(connected["reconnectionToken"]?.stringValue)
            first.send(#"{"type":"sendToGroup","group":"g","dataType":"text","data":"x","ttlSeconds":301,"ackId":1}"#)
            #expect(await first.expect(type: "ack")?["error"]?["message"]?.stringValue?.contains("ttlSeconds") == true)
            await first.close(code: 1001)  // away: the session waits

            try await client.sendToUser(
                hub: "chat", userId: "r", payload: ByteBuffer(string: "short"), contentType: "text/plain", messageTTLSeconds: 1)
            try await client.sendToUser(hub: "chat", userId: "r", payload: ByteBuffer(string: "kept"), contentType: "text/plain")
            try await client.sendToUser(
                hub: "chat", userId: "r", payload: ByteBuffer(string: "long"), contentType: "text/plain", messageTTLSeconds: 300)
            try await Task.sleep(for: .milliseconds(1500))

            let again = try await TestWebSocket.connect(
                access.url + "&awps_connection_id=\(id)&awps_reconnection_token=\(token)", subprotocol: "json.reliable.webpubsub.azure.v1")
            var replayed: [String] = []
            while let m = await again.expect(type: "message", timeout: .seconds(2)) { replayed.append(m["data"]?.stringValue ?? "?") }
            #expect(replayed == ["kept", "long"], "the expired one is dropped, the others come in order")
            await again.close()
        }
    }

    /// As the service: a reliable client that closes with 1000 ends its session at once; one that
    /// closes with another code keeps it for a reconnect within the grace.
    @Test func aReliableClientsNormalCloseEndsItsSessionAndOtherClosesKeepIt() async throws {
        try await withHub({ $0.reconnectGrace = .seconds(60) }) { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            let reliable = "json.reliable.webpubsub.azure.v1"
            let (normal, normalId) = try await connectClient(cs, user: "n", subprotocol: reliable)
            let (away, awayId) = try await connectClient(cs, user: "a", subprotocol: reliable)
            let n = try #require(normalId)
            let a = try #require(awayId)
            await normal.close(code: 1000)
            await away.close(code: 1001)
            let ended = try await eventually(timeout: .seconds(10)) { try await !client.connectionExists(hub: "chat", connectionId: n) }
            #expect(ended, "a close with 1000 ends the session")
            #expect(try await client.connectionExists(hub: "chat", connectionId: a), "kept for a reconnect")
            let aExists = try await client.userExists(hub: "chat", userId: "a")
            let nExists = try await client.userExists(hub: "chat", userId: "n")
            #expect(aExists && !nExists)
        }
    }

    @Test func unknownReconnectionIsAcceptedThenClosedWith1008() async throws {
        try await withHub { _, cs in
            let access = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "u", roles: [], groups: [], expiresIn: .seconds(60))
            let socket = try await TestWebSocket.connect(
                access.url + "&awps_connection_id=nope&awps_reconnection_token=nope", subprotocol: "json.reliable.webpubsub.azure.v1")
            #expect(await socket.next(timeout: .seconds(30)) == .closed(1008))
        }
    }
}

@Suite struct UpstreamTests {
    /// Starts `handler`, then a hub whose hub `chat` sends it `userEvents` (a pattern) and `systemEvents`.
    func withUpstreamHub(
        sendingTo handler: RecordingServer, userEvents: String, systemEvents: Set<String> = [], _ body: (ConnectionString) async throws -> Void
    ) async throws {
        try await handler.start()
        defer { Task { await handler.stop() } }
        let url = "http://127.0.0.1:\(handler.port)/{event}"
        try await withHub({
            $0.eventHandlers["chat"] = [EventHandlerSettings(urlTemplate: url, userEventPattern: userEvents, systemEvents: systemEvents)]
        }) { _, cs in try await body(cs) }
    }

    /// An event handler that passes the abuse-protection handshake and answers each event with `answer`.
    func upstream(_ answer: @escaping @Sendable (RecordingServer.RecordedRequest) -> RecordingServer.ScriptedResponse) -> RecordingServer {
        RecordingServer(verifyToken: false) { request in
            if request.method == "OPTIONS" {
                return .init(status: 200, headers: ["WebHook-Allowed-Origin": request.headers["webhook-request-origin"] ?? ""])
            }
            return answer(request)
        }
    }

    /// An event handler that accepts the handshake, names the user on connect, echoes `echo` events.
    func handlerServer(rejectConnect: Bool = false) -> RecordingServer {
        upstream { request in
            switch request.headers["ce-eventname"] {
            case "connect":
                if rejectConnect { return .init(status: 401, body: "go away") }
                return .init(
                    status: 200, headers: ["ce-connectionState": "c3RhdGU="],
                    body: #"{"userId":"named-by-handler","groups":["vip"],"roles":["webpubsub.sendToGroup"]}"#)
            case "echo":
                return .init(status: 200, headers: ["Content-Type": "text/plain; charset=utf-8"], body: "echo: " + request.bodyText)
            default:
                return .init(status: 204)
            }
        }
    }

    @Test func eventsCarryCloudEventsHeadersAndSignatures() async throws {
        let handler = handlerServer()
        try await handler.start()
        defer { Task { await handler.stop() } }
        try await withHub({ $0.eventHandlers["chat"] = [EventHandlerSettings(urlTemplate: "http://127.0.0.1:\(handler.port)/eventhandler/{event}")] })
        { _, cs in
            let (socket, connectionId) = try await connectClient(cs, user: "token-user")
            let id = try #require(connectionId)
            let connected = socket.drain()
            _ = connected
            socket.send(#"{"type":"event","event":"echo","dataType":"text","data":"hello","ackId":1}"#)
            let reply = await socket.expect(type: "message")
            #expect(reply?["from"] == .string("server") && reply?["data"] == .string("echo: hello") && reply?["dataType"] == .string("text"))
            #expect(await socket.expect(type: "ack")?["success"] == .bool(true))
            await socket.close()
            #expect(await eventually { handler.requests.contains { $0.headers["ce-eventname"] == "disconnected" } })

            let requests = handler.requests
            #expect(requests.first?.method == "OPTIONS")
            #expect(requests.first?.segments == ["eventhandler", "validate"])
            #expect(requests.first?.headers["webhook-request-origin"] == "127.0.0.1")
            let posts = requests.filter { $0.method == "POST" }
            #expect(posts.map { $0.headers["ce-eventname"] ?? "" } == ["connect", "connected", "echo", "disconnected"])
            for post in posts {
                #expect(post.headers["ce-specversion"] == "1.0")
                #expect(post.headers["ce-awpsversion"] == "1.0")
                #expect(post.headers["ce-hub"] == "chat")
                #expect(post.headers["ce-connectionid"] == id)
                #expect(post.headers["ce-source"] == "/hubs/chat/client/\(id)")
                #expect(post.headers["ce-id"]?.isEmpty == false && post.headers["ce-time"]?.hasSuffix("Z") == true)
                let signature = try #require(post.headers["ce-signature"])
                #expect(EventSignature.isValid(signature, connectionId: id, keys: [cs.accessKey]))
            }
            #expect(posts[0].headers["ce-type"] == "azure.webpubsub.sys.connect")
            #expect(posts[0].headers["ce-userid"] == "token-user")
            let connectBody = try JSONValue.parse(posts[0].body)
            #expect(connectBody["claims"]?["sub"] == .array([.string("token-user")]))
            #expect(connectBody["subprotocols"] == .array([.string("json.webpubsub.azure.v1")]))
            // After connect, the handler's userId, groups and state apply.
            #expect(posts[1].headers["ce-userid"] == "named-by-handler")
            #expect(posts[1].headers["ce-connectionstate"] == "c3RhdGU=")
            #expect(posts[2].headers["ce-type"] == "azure.webpubsub.user.echo")
            #expect(posts[2].headers["content-type"] == "text/plain" && posts[2].bodyText == "hello")
            #expect(posts[3].headers["ce-type"] == "azure.webpubsub.sys.disconnected")
            #expect((try? JSONValue.parse(posts[3].body))?["reason"] != nil)
        }
    }

    /// `invoke` as `@azure/web-pubsub-client` sends it (`invokeEvent`): the event goes upstream as
    /// a user event and its reply comes back as `invokeResponse`; refusals are `success: false`
    /// with the service's error names; a cancelled invocation gets no answer; `ping` gets `pong`.
    @Test func invokeIsAnsweredWithTheHandlersReply() async throws {
        let handler = upstream { request in
            switch request.headers["ce-eventname"] {
            case "echo":
                return .init(status: 200, headers: ["Content-Type": "text/plain; charset=utf-8"], body: "echo: " + request.bodyText)
            case "json":
                return .init(status: 200, headers: ["Content-Type": "application/json"], body: #"{"got": \#(request.bodyText)}"#)
            case "bytes":
                return .init(status: 200, headers: ["Content-Type": "application/octet-stream"], body: String(request.bodyText.reversed()))
            case "fail":
                return .init(status: 500, body: "broken")
            case "slow":
                Thread.sleep(forTimeInterval: 0.5)
                return .init(status: 200, headers: ["Content-Type": "text/plain"], body: "late")
            default:
                return .init(status: 204)
            }
        }
        try await withUpstreamHub(
            sendingTo: handler, userEvents: "echo,json,bytes,fail,slow,empty", systemEvents: ["connect", "connected", "disconnected"]
        ) {
            cs in
            let (socket, _) = try await connectClient(cs, user: "u", subprotocol: "json.reliable.webpubsub.azure.v1")
            func invoke(_ frame: String) async -> JSONValue? {
                socket.send(frame)
                return await socket.expect(type: "invokeResponse")
            }
            socket.send(#"{"type":"ping"}"#)
            #expect(await socket.expect(type: "pong") != nil)

            let text = await invoke(#"{"type":"invoke","invocationId":"1","target":"event","event":"echo","dataType":"text","data":"hi"}"#)
            #expect(
                text
                    == .object([
                        ("type", .string("invokeResponse")), ("invocationId", .string("1")), ("success", .bool(true)),
                        ("dataType", .string("text")), ("data", .string("echo: hi")),
                    ]))
            #expect(text?["sequenceId"] == nil, "not sequenced: the client would never acknowledge it")
            let json = await invoke(#"{"type":"invoke","invocationId":"2","target":"event","event":"json","dataType":"json","data":{"n":[1,2]}}"#)
            #expect(
                json?["dataType"] == .string("json") && json?["data"] == .object([("got", .object([("n", .array([.number("1"), .number("2")]))]))]))
            let bytes = await invoke(#"{"type":"invoke","invocationId":"3","event":"bytes","dataType":"binary","data":"YWJj"}"#)
            #expect(bytes?["dataType"] == .string("binary") && bytes?["data"] == .string("Y2Jh"), "abc reversed, base64 both ways")
            let empty = await invoke(#"{"type":"invoke","invocationId":"4","event":"empty"}"#)
            #expect(empty?["success"] == .bool(true) && empty?["data"] == nil, "204: success without data")

            let failed = await invoke(#"{"type":"invoke","invocationId":"5","event":"fail","dataType":"text","data":"x"}"#)
            #expect(failed?["success"] == .bool(false) && failed?["error"]?["name"] == .string("InternalServerError"))
            for (frame, why) in [
                (#"{"type":"invoke","invocationId":"6","target":"group","event":"echo"}"#, "not supported"),
                (#"{"type":"invoke","invocationId":"7","event":"nobody"}"#, "No event handler"),
                (#"{"type":"invoke","invocationId":"8","event":"9bad name"}"#, "event"),
                (#"{"type":"invoke","invocationId":"9","event":"echo","dataType":"binary","data":"not base64!"}"#, "dataType"),
            ] {
                let refused = await invoke(frame)
                #expect(refused?["success"] == .bool(false) && refused?["error"]?["name"] == .string("BadRequest"), "\(frame)")
                #expect(refused?["error"]?["message"]?.stringValue?.contains(why) == true, "\(refused?.serialized ?? "nil")")
            }

            // Invocations run beside the frames that follow: a duplicate is refused at once, a cancel is read at once.
            socket.send(#"{"type":"invoke","invocationId":"slow-1","event":"slow","dataType":"text","data":"x"}"#)
            let duplicate = await invoke(#"{"type":"invoke","invocationId":"slow-1","event":"echo","dataType":"text","data":"x"}"#)
            #expect(duplicate?["success"] == .bool(false) && duplicate?["error"]?["message"]?.stringValue?.contains("in progress") == true)
            socket.send(#"{"type":"cancelInvocation","invocationId":"slow-1"}"#)
            try await Task.sleep(for: .seconds(1))
            let after = await invoke(#"{"type":"invoke","invocationId":"10","event":"echo","dataType":"text","data":"still here"}"#)
            #expect(after?["invocationId"] == .string("10"), "the cancelled invocation's answer was not sent")
            #expect(handler.requests.filter { $0.headers["ce-eventname"] == "slow" }.count == 1)

            // An invoke without an id cannot be answered: the connection ends.
            socket.send(#"{"type":"invoke","event":"echo"}"#)
            let bye = await socket.expect(type: "system", event: "disconnected")
            #expect(bye?["message"]?.stringValue?.contains("invocationId") == true)
        }
    }

    /// Metadata as the service carries it: REST `X-WebPubSub-Metadata-*` headers and client frames'
    /// `metadata` reach JSON clients (plain ones get the payload alone), go upstream as headers,
    /// and come back from the handler's answer; what the service would refuse is refused.
    @Test func metadataTravelsWithMessagesAndEvents() async throws {
        let handler = upstream { request in
            if request.headers["ce-eventname"] == "echo" {
                return .init(status: 200, headers: ["Content-Type": "text/plain", "X-WebPubSub-Metadata-Result": "handled"], body: "ok")
            }
            return .init(status: 204)
        }
        try await withUpstreamHub(sendingTo: handler, userEvents: "echo") { cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            let (json, _) = try await connectClient(cs, user: "j", roles: ["webpubsub.sendToGroup"], groups: ["room"])
            let (reliable, _) = try await connectClient(cs, user: "r", groups: ["room"], subprotocol: "json.reliable.webpubsub.azure.v1")
            let (plain, _) = try await connectClient(cs, user: "p", groups: ["room"], subprotocol: nil)

            try await client.sendToGroup(
                hub: "chat", group: "room", payload: ByteBuffer(string: "hi"), contentType: "text/plain",
                metadata: [MetadataEntry(key: "TraceId", value: "abc-123")])
            let expected: JSONValue = .object([("traceid", .string("abc-123"))])
            #expect(await json.expect(type: "message")?["metadata"] == expected, "the key lower-cased, as the service does")
            #expect(await reliable.expect(type: "message")?["metadata"] == expected)
            #expect(await plain.next() == .text("hi"))

            await #expect(throws: WebPubSubError.self, "a value over 1,024 characters") {
                try await client.sendToAll(
                    hub: "chat", payload: ByteBuffer(string: "x"), contentType: "text/plain",
                    metadata: [MetadataEntry(key: "k", value: String(repeating: "v", count: 1025))])
            }
            await #expect(throws: WebPubSubError.self, "over 8 KiB in all") {
                try await client.sendToAll(
                    hub: "chat", payload: ByteBuffer(string: "x"), contentType: "text/plain",
                    metadata: (0..<9).map { MetadataEntry(key: "k\($0)", value: String(repeating: "v", count: 1000)) })
            }

            json.send(#"{"type":"sendToGroup","group":"room","dataType":"text","data":"x","metadata":{"Tag":"v1"},"noEcho":true,"ackId":1}"#)
            #expect(await json.expect(type: "ack")?["success"] == .bool(true))
            #expect(await reliable.expect(type: "message")?["metadata"] == .object([("Tag", .string("v1"))]), "a frame's keys keep their case")
            json.send(#"{"type":"sendToGroup","group":"room","dataType":"text","data":"x","metadata":{"tag":1},"ackId":2}"#)
            let refused = await json.expect(type: "ack")
            #expect(
                refused?["error"]?["name"] == .string("BadRequest")
                    && refused?["error"]?["message"]?.stringValue?.contains("must be a string") == true)

            json.send(#"{"type":"event","event":"echo","dataType":"text","data":"x","metadata":{"TraceId":"t-9"},"ackId":3}"#)
            let reply = await json.expect(type: "message")
            #expect(reply?["from"] == .string("server") && reply?["metadata"] == .object([("result", .string("handled"))]))
            #expect(handler.requests.first { $0.headers["ce-eventname"] == "echo" }?.headers["x-webpubsub-metadata-traceid"] == "t-9")
        }
    }

    /// A protobuf client built from the hub's .proto (protoc and Python's `protobuf`) on both
    /// protobuf subprotocols: join, send to a group with metadata, an event answered by the
    /// handler, an invoke, a ping, and a message type the hub does not serve.
    @Test(arguments: ["protobuf.webpubsub.azure.v1", "protobuf.reliable.webpubsub.azure.v1"])
    func aProtobufClientSpeaksTheSameProtocol(subprotocol: String) async throws {
        let handler = upstream { request in
            if request.headers["ce-eventname"] == "echo" {
                return .init(status: 200, headers: ["Content-Type": "text/plain"], body: "echo: " + request.headers["content-type", default: "?"])
            }
            return .init(status: 204)
        }
        try await withUpstreamHub(sendingTo: handler, userEvents: "echo") { cs in
            let access = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "pb",
                roles: ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"], groups: [], expiresIn: .seconds(600))
            let result = try await runProcess(
                try TestEnvironment.python(),
                [
                    TestEnvironment.packageRoot + "/Tests/python/protobuf_client.py", TestEnvironment.packageRoot + "/Sources/LocalHub/Protobuf",
                    access.url, subprotocol,
                ],
                timeout: 60)
            #expect(result.status == 0, "\(result.stderr)")
            let lines = result.stdout.split(separator: "\n").map(String.init)
            let messages = lines.compactMap { try? JSONValue.parse(Array($0.utf8)) }
            let reliable = subprotocol.contains("reliable")
            #expect(messages.first?["systemMessage"]?["connectedMessage"]?["connectionId"] != nil, "\(lines)")
            #expect((messages.first?["systemMessage"]?["connectedMessage"]?["reconnectionToken"] != nil) == reliable)
            let acks = messages.compactMap { $0["ackMessage"] }
            #expect(acks.map { $0["ackId"]?.stringValue ?? "?" } == ["1", "2", "3"] && acks.allSatisfy { $0["success"] == .bool(true) }, "\(lines)")
            let data = messages.compactMap { $0["dataMessage"] }
            #expect(data.count == 2, "\(lines)")
            if data.count == 2 {
                #expect(data[0]["from"] == .string("group") && data[0]["group"] == .string("g") && data[0]["data"]?["textData"] == .string("hi"))
                #expect(data[0]["metadata"] == .object([("trace", .string("t1"))]))
                #expect((data[0]["sequenceId"] != nil) == reliable, "sequenced on the reliable protocol only")
                #expect(data[1]["from"] == .string("server") && data[1]["data"]?["textData"] == .string("echo: application/json"))
            }
            let invoked = messages.compactMap { $0["invokeResponseMessage"] }.first
            #expect(invoked?["invocationId"] == .string("i1") && invoked?["success"] == .bool(true))
            #expect(invoked?["data"]?["textData"] == .string("echo: application/octet-stream"), "binary data went up as bytes")
            #expect(messages.contains { $0["pongMessage"] != nil })
            let bye = messages.compactMap { $0["systemMessage"]?["disconnectedMessage"]?["reason"]?.stringValue }.first
            #expect(bye?.contains("does not serve") == true, "\(lines)")
            #expect(lines.last?.hasPrefix("closed") == true)
        }
    }

    @Test func connectRejectionRefusesTheSocket() async throws {
        let handler = handlerServer(rejectConnect: true)
        try await handler.start()
        defer { Task { await handler.stop() } }
        try await withHub({ $0.eventHandlers["chat"] = [EventHandlerSettings(urlTemplate: "http://127.0.0.1:\(handler.port)/{event}")] }) { _, cs in
            let access = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "u", roles: [], groups: [], expiresIn: .seconds(60))
            await #expect(throws: (any Error).self) { _ = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1") }
            #expect(!handler.requests.contains { $0.headers["ce-eventname"] == "connected" })
        }
    }

    @Test func aHandlerThatRefusesTheHandshakeGetsNoEvents() async throws {
        let handler = RecordingServer(verifyToken: false) { request in
            request.method == "OPTIONS" ? .init(status: 400) : .init(status: 204)
        }
        try await handler.start()
        defer { Task { await handler.stop() } }
        try await withHub({ $0.eventHandlers["chat"] = [EventHandlerSettings(urlTemplate: "http://127.0.0.1:\(handler.port)/{event}")] }) { _, cs in
            let access = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "u", roles: [], groups: [], expiresIn: .seconds(60))
            let error = await #expect(throws: (any Error).self) {
                _ = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
            }
            // Refused at the upgrade after the handshake failed, not a connection refused.
            #expect(error.map { "\($0)".contains("upgrade failed") } == true, "\(String(describing: error))")
            #expect(!handler.requests.isEmpty && handler.requests.allSatisfy { $0.method == "OPTIONS" }, "\(handler.requests)")
        }
    }

    /// A reply over the size limit fails the same way every time: the event is not sent again
    /// (a 5xx is, `upstreamRetries` times).
    @Test func onlyFailuresThatMayPassAreRetried() async throws {
        let big = String(repeating: "x", count: 5 * 1024 * 1024)
        let handler = upstream { request in
            switch request.headers["ce-eventname"] {
            case "big": return .init(status: 200, headers: ["Content-Type": "text/plain"], body: big)
            case "flaky": return .init(status: 503)
            default: return .init(status: 204)
            }
        }
        try await handler.start()
        defer { Task { await handler.stop() } }
        try await withHub({
            $0.eventHandlers["chat"] = [EventHandlerSettings(urlTemplate: "http://127.0.0.1:\(handler.port)/eventhandler/{event}")]
            $0.upstreamRetries = 3
            $0.upstreamRetryBackoff = .milliseconds(10)
        }) { _, cs in
            let (socket, _) = try await connectClient(cs, user: "u")
            _ = socket.drain()
            socket.send(#"{"type":"event","event":"big","dataType":"text","data":"x","ackId":1}"#)
            let bigAck = await socket.expect(type: "ack")
            #expect(bigAck?["success"] == .bool(false), "\(String(describing: bigAck))")
            socket.send(#"{"type":"event","event":"flaky","dataType":"text","data":"x","ackId":2}"#)
            _ = await socket.expect(type: "ack")
            let posts = handler.requests.filter { $0.method == "POST" }
            #expect(posts.filter { $0.headers["ce-eventname"] == "big" }.count == 1, "no resend after an oversized reply")
            #expect(posts.filter { $0.headers["ce-eventname"] == "flaky" }.count == 4, "a 5xx is tried 1 + 3 times")
        }
    }
}
