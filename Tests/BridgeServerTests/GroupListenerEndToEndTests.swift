import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSub

/// Two official Python SDK clients chat with `send_to_group`; the bridge's group listener
/// (`type: webpubsub`) hears them through a proxy that drops its socket mid-chat, mirrors every
/// message into a Kafka topic (an `events:` rule on `group:room`) and forwards it to another hub
/// (a route).
@Suite(.serialized) struct GroupListenerEndToEndTests {
    @Test func groupChatIsMirroredIntoKafkaOnceInOrderPerSenderAcrossADroppedSocket() async throws {
        let broker = try await KafkaBroker()
        let hubPort = try TestEnvironment.freePort()
        let key = "listener-e2e-key-0123456789ABCDEFGHIJ"
        // The listener reaches the hub through the proxy; everything else goes straight to it.
        let proxy = try await TCPProxy(to: hubPort)
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub:
              embedded: {port: \(hubPort), accessKey: \(key)}
            sources:
              - name: room-listener
                type: webpubsub
                hub: chat
                groups: [room]
                connectionString: "Endpoint=http://127.0.0.1;Port=\(proxy.port);AccessKey=\(key);Version=1.0;"
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: room-listener
                to:
                  - {hub: archive, group: "{group}"}
                  # Back into the hub it came from: skipped (loop prevention).
                  - {hub: chat, group: "{group}"}
            events:
              - hub: chat
                events: ["group:room"]
                to: {type: kafka, brokers: "\(broker.brokers)", topic: chat-room, key: "{userId}"}
            """, in: dir)
        #expect(await eventually { TestEnvironment.isListening(hubPort) && proxy.accepted >= 1 }, "\(bridge.logTail)")
        #expect(await eventually { bridge.log.contains("listener connected") }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        let archive = try await TestWebSocket.connect(
            try ClientAccess.make(
                endpoint: cs.endpoint, hub: "archive", key: cs.accessKey, userId: "auditor", roles: [], groups: ["room"], expiresIn: .seconds(600)
            ).url,
            subprotocol: "json.webpubsub.azure.v1")
        #expect(await archive.expect(type: "system", event: "connected") != nil)

        let rounds = 100
        async let chat = runProcess(
            try TestEnvironment.python(), [TestEnvironment.packageRoot + "/Tests/python/group_chat.py", cs.text, "chat", "room", String(rounds)],
            timeout: 120)
        // Mid-chat, the listener's link breaks.
        var forwarded = await archive.messages(40)
        proxy.cut()
        let chatResult = try await chat
        #expect(chatResult.status == 0, "\(chatResult.stderr)\n\(bridge.logTail)")
        forwarded += await archive.messages(2 * rounds - forwarded.count, idle: .seconds(20))

        // Reading on for 3 s after the last expected record: a repeated one would show.
        let records = try await KafkaTool.consume(broker.brokers, topic: "chat-room", count: 2 * rounds, linger: 3)
        let envelopes = try records.map { try JSONValue.parse(Array(($0.value ?? "").utf8)) }
        #expect(records.count == 2 * rounds, "each message once")
        for sender in ["alice", "bob"] {
            let mine = zip(records, envelopes).filter { $0.0.key == sender }
            #expect(mine.map { $0.1["data"]?["n"] } == (0..<rounds).map { .number(String($0)) }, "\(sender): all, once, in the order sent")
            #expect(mine.allSatisfy { $0.1["userid"] == .string(sender) && $0.1["data"]?["from"] == .string(sender) })
        }
        let first = try #require(envelopes.first)
        #expect(first["type"] == .string("azure.webpubsub.group.message") && first["specversion"] == .string("1.0"))
        #expect(first["source"] == .string("/hubs/chat/groups/room") && first["group"] == .string("room") && first["hub"] == .string("chat"))
        #expect(first["datacontenttype"] == .string("application/json"))
        #expect(Set(envelopes.compactMap { $0["id"]?.stringValue }).count == 2 * rounds, "ids are unique")
        #expect(records.first?.headers["wps-mirrored-from"] == "chat" && records.first?.headers["ce-type"] == "azure.webpubsub.group.message")

        // The route forwarded every message to the other hub, and not back into this one.
        #expect(forwarded.count == 2 * rounds, "\(bridge.logTail)")
        #expect(
            Set(forwarded.compactMap { m in m["data"].map { "\($0["from"]?.stringValue ?? "")-\($0["n"]?.serialized ?? "")" } }).count == 2 * rounds)
        #expect(proxy.accepted >= 2, "the listener came back after the cut")
        #expect(bridge.log.contains("session recovered"), "\(bridge.logTail)")
        await archive.close()
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        #expect(bridge.log.contains("loops prevented \(2 * rounds)"), "\(bridge.logTail)")
        await proxy.stop()
        await broker.stop()
    }
}
