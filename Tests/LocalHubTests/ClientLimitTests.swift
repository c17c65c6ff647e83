import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import NIOCore
import Testing
import WebPubSub

/// What one client connection may ask of the hub.
@Suite struct ClientLimitTests {
    /// A connection joins at most `maxGroupsPerConnection` groups itself; past that the join is
    /// refused with an error ack, and the connection stays usable.
    @Test func groupsPerConnectionAreCapped() async throws {
        try await withHub({ $0.maxGroupsPerConnection = 3 }) { _, cs in
            let (c, id) = try await connectClient(cs, user: "joiner", roles: ["webpubsub.joinLeaveGroup"])
            _ = c.drain()
            for (i, group) in ["g1", "g2", "g3"].enumerated() {
                c.send(#"{"type":"joinGroup","group":"\#(group)","ackId":\#(i + 1)}"#)
                #expect(await c.expect(type: "ack")?["success"] == .bool(true))
            }
            c.send(#"{"type":"joinGroup","group":"g4","ackId":4}"#)
            let refused = await c.expect(type: "ack")
            #expect(refused?["success"] == .bool(false))
            #expect(refused?["error"]?["name"] == .string("Forbidden"))
            #expect(refused?["error"]?["message"]?.stringValue?.contains("3 groups") == true, "\(String(describing: refused))")
            // A group it is in already, or after leaving one: fine.
            c.send(#"{"type":"joinGroup","group":"g1","ackId":5}"#)
            #expect(await c.expect(type: "ack")?["success"] == .bool(true))
            c.send(#"{"type":"leaveGroup","group":"g1","ackId":6}"#)
            #expect(await c.expect(type: "ack")?["success"] == .bool(true))
            c.send(#"{"type":"joinGroup","group":"g4","ackId":7}"#)
            #expect(await c.expect(type: "ack")?["success"] == .bool(true))
            // Through REST the same cap holds.
            let client = WebPubSubServiceClient(connectionString: cs)
            let error = await #expect(throws: WebPubSubError.self) {
                try await client.addConnectionToGroup(hub: "chat", group: "g5", connectionId: try #require(id))
            }
            #expect(error?.status == 400 && error?.message.contains("3 groups") == true, "\(String(describing: error))")
            try await client.shutdown()
        }
    }

    /// Event names follow the service's rule; others are refused with an error ack and never
    /// reach the event handler (where the name would become a header).
    @Test(arguments: ["bad name", "1abc", "a\r\nX-Injected: 1", "ünï", String(repeating: "e", count: 129), ""])
    func badEventNamesAreRefused(name: String) async throws {
        let handler = RecordingServer(verifyToken: false) { request in
            request.method == "OPTIONS"
                ? .init(status: 200, headers: ["WebHook-Allowed-Origin": request.headers["webhook-request-origin"] ?? ""]) : .init(status: 204)
        }
        try await handler.start()
        defer { Task { await handler.stop() } }
        try await withHub({ $0.eventHandlers["chat"] = [EventHandlerSettings(urlTemplate: "http://127.0.0.1:\(handler.port)/{event}")] }) { _, cs in
            let (c, _) = try await connectClient(cs, user: "u")
            _ = c.drain()
            let frame = JSONValue.object([
                ("type", .string("event")), ("event", .string(name)), ("dataType", .string("text")), ("data", .string("x")), ("ackId", .number("1")),
            ])
            c.send(frame.serialized)
            let ack = await c.expect(type: "ack")
            #expect(ack?["success"] == .bool(false))
            #expect(ack?["error"]?["name"] == .string("Forbidden"), "\(String(describing: ack))")
            // A good name goes through: the refused one did not.
            c.send(#"{"type":"event","event":"good.name-1_x","dataType":"text","data":"x","ackId":2}"#)
            #expect(await c.expect(type: "ack")?["success"] == .bool(true))
            let events = handler.requests.filter { $0.method == "POST" }.compactMap { $0.headers["ce-eventname"] }
            #expect(events.filter { $0 != "connect" && $0 != "connected" } == ["good.name-1_x"], "\(events)")
        }
    }
}

/// The memory kept for reliable replays is bounded across all sessions.
@Suite struct ReplayMemoryTests {
    /// Two reliable clients that never acknowledge: once what they hold passes the hub's limit,
    /// the one holding the most is ended; the other goes on.
    @Test func theSessionHoldingTheMostIsEndedFirst() async throws {
        try await withHub({ $0.maxReplayBytes = 200 * 1024 }) { hub, cs in
            let (big, _) = try await connectClient(cs, user: "big", subprotocol: "json.reliable.webpubsub.azure.v1")
            let (small, _) = try await connectClient(cs, user: "small", subprotocol: "json.reliable.webpubsub.azure.v1")
            _ = big.drain()
            _ = small.drain()
            let client = WebPubSubServiceClient(connectionString: cs)
            let chunk = String(repeating: "x", count: 10 * 1024)
            for _ in 0..<5 { try await client.sendToUser(hub: "chat", userId: "small", payload: .init(string: chunk), contentType: "text/plain") }
            for _ in 0..<12 { try await client.sendToUser(hub: "chat", userId: "big", payload: .init(string: chunk), contentType: "text/plain") }
            // 170 KB held: under the limit, both are there.
            #expect(try await client.userExists(hub: "chat", userId: "big"))
            for _ in 0..<6 { try await client.sendToUser(hub: "chat", userId: "big", payload: .init(string: chunk), contentType: "text/plain") }
            // Over 200 KB: "big" (180 KB) goes, "small" (50 KB) stays.
            #expect(await eventually { (try? await client.userExists(hub: "chat", userId: "big")) == false })
            #expect(try await client.userExists(hub: "chat", userId: "small"))
            try await client.sendToUser(hub: "chat", userId: "small", payload: .init(string: "still here"), contentType: "text/plain")
            let frames = await small.messages(6)
            #expect(frames.last?["data"] == .string("still here"), "\(frames.count) frames")
            try await client.shutdown()
            _ = hub
        }
    }
}
