import BridgeJSON
import BridgeTestSupport
import Foundation
import NIOCore
import Testing
import WebPubSub

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The official Python client SDK on the embedded hub, whose upstream is the bridge: its events
/// end up as CloudEvents envelopes in a Kafka topic (Tansu) and a file.
@Suite(.serialized) struct MirrorEndToEndTests {
    @Test func clientEventsAreMirroredIntoKafkaAndAFile() async throws {
        let broker = try await KafkaBroker()
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "mirror-test-key-0123456789ABCDEFGHIJ"
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub:
              embedded: {port: \(hubPort), accessKey: \(key), reconnectGrace: 1s}
              hub: chat
            server:
              listen: 127.0.0.1:\(serverPort)
            eventHandler:
              connect:
                groups: ["room-{query.room}"]
                state: "room {query.room}"
            events:
              - hub: chat
                events: [chat]
                to: {type: kafka, brokers: "\(broker.brokers)", topic: "mirror-{hub}", key: "{userId}"}
              - hub: chat
                events: [note, connected, disconnected]
                to: {type: file, path: events.ndjson}
                reply: ack
            """, in: dir)
        #expect(await eventually { TestEnvironment.isListening(hubPort) && TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let cs = "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;"
        let client = try await runProcess(
            try TestEnvironment.python(), [TestEnvironment.packageRoot + "/Tests/python/mirror_client.py", cs, "chat", "alice", "5", "&room=42"],
            timeout: 60)
        #expect(client.status == 0, "\(client.stderr)\n\(bridge.logTail)")
        // The `note` rule answers with an ack, which the hub hands back to the client.
        #expect(client.stdout.contains(#""ack""#) && client.stdout.contains(#""event": "note""#), "\(client.stdout)")

        let records = try await KafkaTool.consume(broker.brokers, topic: "mirror-chat", count: 5)
        #expect(records.map(\.key) == Array(repeating: "alice", count: 5))
        let envelopes = try records.map { try JSONValue.parse(Array(($0.value ?? "").utf8)) }
        #expect(envelopes.map { $0["data"]?["n"] } == (0..<5).map { .number(String($0)) }, "in the order sent")
        for (record, e) in zip(records, envelopes) {
            #expect(e["type"] == .string("azure.webpubsub.user.chat") && e["specversion"] == .string("1.0"))
            #expect(e["userid"] == .string("alice") && e["hub"] == .string("chat") && e["eventname"] == .string("chat"))
            #expect(e["groups"] == .array([.string("room-42")]))
            #expect(record.headers["ce-type"] == "azure.webpubsub.user.chat" && record.headers["wps-mirrored-from"] == "chat")
        }

        #expect(await eventually { ((try? String(contentsOfFile: dir + "/events.ndjson", encoding: .utf8)) ?? "").split(separator: "\n").count >= 3 })
        let lines = try String(contentsOfFile: dir + "/events.ndjson", encoding: .utf8).split(separator: "\n")
        let fileEnvelopes = try lines.map { try JSONValue.parse(Array($0.utf8))["data"] ?? .null }
        #expect(fileEnvelopes.map { $0["eventname"]?.stringValue ?? "?" } == ["connected", "note", "disconnected"], "\(lines)")
        #expect(fileEnvelopes[1]["data"] == .string("hello text") && fileEnvelopes[1]["datacontenttype"] == .string("text/plain"))
        #expect(fileEnvelopes[0]["type"] == .string("azure.webpubsub.sys.connected"))
        // The state the connect policy set comes back with each later event, as the service sends it.
        let state = Data("room 42".utf8).base64EncodedString()
        #expect(fileEnvelopes.map { $0["connectionstate"] } == Array(repeating: .string(state), count: 3), "\(fileEnvelopes)")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await broker.stop()
    }

    /// A Web PubSub service of its own (`wps-bridge hub` as a separate process, as Azure is)
    /// sends its events to a bridge that names no `allowedOrigins`: the service's abuse-protection
    /// handshake passes because its host is the configured endpoint's. The official Python client
    /// (reliable subprotocol) closes normally, so its session ends at once: `disconnected`
    /// arrives without the hub's 30 s reconnect grace.
    @Test func aSeparateServiceReachesABridgeWithoutAllowedOriginsAndANormalCloseEndsTheSession() async throws {
        let serverPort = try TestEnvironment.freePort()
        let hub = try await HubProcess(arguments: ["--event-handler", "chat=http://127.0.0.1:\(serverPort)/eventhandler/{hub}"])
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            server:
              listen: 127.0.0.1:\(serverPort)
            events:
              - {hub: chat, events: [chat, note, connected, disconnected], to: {type: file, path: events.ndjson}}
            """, in: dir)
        #expect(await eventually { TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let client = try await runProcess(
            try TestEnvironment.python(),
            [TestEnvironment.packageRoot + "/Tests/python/mirror_client.py", hub.connectionString, "chat", "carol", "2"],
            timeout: 60)
        #expect(client.status == 0, "\(client.stderr)\n\(bridge.logTail)")
        func events() -> [String] {
            let text = (try? String(contentsOfFile: dir + "/events.ndjson", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").map { (try? JSONValue.parse(Array($0.utf8))["data"]?["eventname"]?.stringValue) ?? "?" }
        }
        // Well within the 30 s grace a dropped reliable session would be kept for.
        #expect(await eventually(timeout: .seconds(15)) { events().last == "disconnected" }, "\(events())\n\(bridge.logTail)")
        // `connected` is not blocking: the hub sends it beside the first user events, as the service does.
        #expect(events().sorted() == ["chat", "chat", "connected", "disconnected", "note"], "\(events())")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await hub.stop()
    }

    /// A raw client speaking `@azure/web-pubsub-client`'s invoke frames to the embedded hub, whose
    /// upstream is the bridge: the event is mirrored, and the rule's templated reply comes back as
    /// the `invokeResponse`; an `event` gets the same reply as a server message.
    @Test func anInvokeIsMirroredAndAnsweredWithTheRulesReply() async throws {
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "invoke-test-key-0123456789ABCDEFGHIJ"
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub:
              embedded: {port: \(hubPort), accessKey: \(key)}
              hub: chat
            server:
              listen: 127.0.0.1:\(serverPort)
            events:
              - hub: chat
                events: [order]
                to: {type: file, path: orders.ndjson}
                reply: {json: {received: "{event}", by: "{userId}", ok: true}}
            """, in: dir)
        #expect(await eventually { TestEnvironment.isListening(hubPort) && TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "dave", roles: [], groups: [], expiresIn: .seconds(600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        #expect(await socket.expect(type: "system", event: "connected") != nil)
        socket.send(#"{"type":"invoke","invocationId":"1","target":"event","event":"order","dataType":"json","data":{"item":"tea"}}"#)
        let response = await socket.expect(type: "invokeResponse")
        #expect(
            response?["success"] == .bool(true) && response?["dataType"] == .string("json"), "\(response?.serialized ?? "nil")\n\(bridge.logTail)")
        #expect(response?["data"] == .object([("received", .string("order")), ("by", .string("dave")), ("ok", .bool(true))]))
        socket.send(#"{"type":"event","event":"order","dataType":"text","data":"coffee","ackId":7}"#)
        let message = await socket.expect(type: "message")
        #expect(message?["from"] == .string("server") && message?["data"]?["by"] == .string("dave"))
        #expect(await socket.expect(type: "ack")?["success"] == .bool(true))
        let lines = try String(contentsOfFile: dir + "/orders.ndjson", encoding: .utf8).split(separator: "\n")
        let data = try lines.map { try JSONValue.parse(Array($0.utf8))["data"]?["data"] ?? .null }
        #expect(data == [.object([("item", .string("tea"))]), .string("coffee")], "both were mirrored before they were answered")
        await socket.close()
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
    }

    @Test func forgedEventsOverHTTPAreRefused() async throws {
        let serverPort = try TestEnvironment.freePort()
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub:
              connectionString: "Endpoint=http://127.0.0.1;Port=1;AccessKey=real-key-0123456789;Version=1.0;"
            server:
              listen: 127.0.0.1:\(serverPort)
            eventHandler:
              allowedOrigins: [myhub.webpubsub.azure.com]
            events:
              - {hub: chat, events: ["*"], to: {type: file, path: events.ndjson}}
            """, in: dir)
        #expect(await eventually { TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let base = "http://127.0.0.1:\(serverPort)"
        func call(_ method: String, _ path: String, _ headers: [String: String], _ body: String = "{}") async throws -> Int {
            var request = URLRequest(url: URL(string: base + path)!)
            request.httpMethod = method
            for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
            if method == "POST" { request.httpBody = Data(body.utf8) }
            let (_, response) = try await URLSession.shared.data(for: request)
            return (response as? HTTPURLResponse)?.statusCode ?? 0
        }
        let forged = [
            "ce-specversion": "1.0", "ce-id": "1", "ce-type": "azure.webpubsub.user.chat", "ce-source": "/hubs/chat/client/c1", "ce-hub": "chat",
            "ce-connectionId": "c1", "ce-eventName": "chat", "ce-signature": "sha256=00ff", "Content-Type": "application/json",
        ]
        #expect(try await call("POST", "/eventhandler/chat", forged) == 401)
        #expect(try await call("POST", "/eventhandler/other", forged) == 404)
        var noType = forged
        noType["ce-type"] = nil
        #expect(try await call("POST", "/eventhandler/chat", noType) == 400)
        #expect(try await call("OPTIONS", "/eventhandler/chat", ["WebHook-Request-Origin": "evil.example.com"]) == 403)
        #expect(try await call("OPTIONS", "/eventhandler/chat", ["WebHook-Request-Origin": "myhub.webpubsub.azure.com"]) == 200)
        #expect(
            try await call("OPTIONS", "/eventhandler/chat", ["WebHook-Request-Origin": "127.0.0.1"]) == 200,
            "the host of the service the bridge sends to is allowed besides allowedOrigins")
        #expect(try await call("GET", "/healthz", [:]) == 200)
        // Nothing listens where webpubsub points: alive, but not ready.
        #expect(try await call("GET", "/readyz", [:]) == 503)
        #expect(!FileManager.default.fileExists(atPath: dir + "/events.ndjson"))
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
    }

    @Test func aSinkThatIsDownMakesTheHubRetryUntilTheEventIsWritten() async throws {
        let brokerPort = try TestEnvironment.freePort()
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "retry-test-key-0123456789ABCDEFGHIJ"
        let bridge = try BridgeProcess(
            """
            webpubsub:
              embedded: {port: \(hubPort), accessKey: \(key), upstreamRetries: 30}
              hub: chat
            server:
              listen: 127.0.0.1:\(serverPort)
            events:
              - hub: chat
                events: [chat]
                to: {type: kafka, brokers: "127.0.0.1:\(brokerPort)", topic: retried, deliveryTimeout: 1s}
            """, in: try TestEnvironment.temporaryDirectory())
        #expect(await eventually { TestEnvironment.isListening(hubPort) && TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "carol", roles: [], groups: [], expiresIn: .seconds(600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        #expect(await socket.expect(type: "system", event: "connected") != nil)
        socket.send(#"{"type":"event","event":"chat","dataType":"json","data":{"n":7},"ackId":1}"#)
        // The broker is down: the handler answers 500 and the hub tries again.
        #expect(await eventually { bridge.log.contains("answering 500") && bridge.log.contains("trying again") }, "\(bridge.logTail)")
        let broker = try await KafkaBroker(port: brokerPort)
        let ack = await socket.expect(type: "ack", timeout: .seconds(60))
        #expect(ack?["success"] == .bool(true), "\(bridge.logTail)")
        let records = try await KafkaTool.consume(broker.brokers, topic: "retried", count: 1)
        #expect(records.first.flatMap { try? JSONValue.parse(Array(($0.value ?? "").utf8))["data"]?["n"] } == .number("7"))
        await socket.close()
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await broker.stop()
    }

    @Test func theConnectPolicyRefusesOrPlacesConnections() async throws {
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "policy-test-key-0123456789ABCDEFGHIJ"
        let bridge = try BridgeProcess(
            """
            webpubsub:
              embedded: {port: \(hubPort), accessKey: \(key)}
              hub: chat
            server:
              listen: 127.0.0.1:\(serverPort)
            eventHandler:
              connect:
                requireUser: true
                userId: "{query.as}"
                groups: ["room-{query.room}"]
            events:
              - {hub: chat, events: [connected], to: {type: file, path: connected.ndjson}}
            """, in: try TestEnvironment.temporaryDirectory())
        #expect(await eventually { TestEnvironment.isListening(hubPort) && TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        let anonymous = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: nil, roles: [], groups: [], expiresIn: .seconds(600))
        // No user in the token nor in the query: the hub refuses the handshake with the policy's reason.
        await #expect(throws: (any Error).self) {
            _ = try await TestWebSocket.connect(anonymous.url + "&room=42", subprotocol: "json.webpubsub.azure.v1")
        }
        // The user comes from the query; the connection is placed in the room.
        let socket = try await TestWebSocket.connect(anonymous.url + "&room=42&as=dave", subprotocol: "json.webpubsub.azure.v1")
        let connected = await socket.expect(type: "system", event: "connected")
        #expect(connected?["userId"] == .string("dave"), "\(bridge.logTail)")
        let client = WebPubSubServiceClient(connectionString: cs)
        try await client.sendToGroup(hub: "chat", group: "room-42", payload: ByteBuffer(string: "welcome"), contentType: "text/plain")
        #expect(await socket.expect(type: "message")?["data"] == .string("welcome"))
        try await client.shutdown()
        await socket.close()
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
    }
}
