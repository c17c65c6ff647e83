import BridgeConfig
import BridgeCore
import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import Logging
import NIOCore
import Synchronization
import Testing
import WebPubSub

@testable import GroupListener

let quiet = Logger(label: "listener-test") { _ in SwiftLogNoOpLogHandler() }

@Suite struct ReliableSessionTests {
    @Test func framesAreRead() {
        #expect(
            ServiceFrame.parse(#"{"type":"system","event":"connected","connectionId":"c1","userId":"u","reconnectionToken":"t"}"#)
                == .connected(connectionId: "c1", userId: "u", reconnectionToken: "t"))
        #expect(
            ServiceFrame.parse(#"{"type":"message","from":"group","group":"g","dataType":"json","data":{"n":1.50},"fromUserId":"a","sequenceId":7}"#)
                == .groupMessage(group: "g", fromUserId: "a", dataType: "json", data: Array(#"{"n":1.50}"#.utf8), sequenceId: 7))
        #expect(
            ServiceFrame.parse(#"{"type":"message","from":"group","group":"g","dataType":"binary","data":"AAEC","sequenceId":8}"#)
                == .groupMessage(group: "g", fromUserId: nil, dataType: "binary", data: [0, 1, 2], sequenceId: 8))
        #expect(
            ServiceFrame.parse(#"{"type":"message","from":"group","group":"g","dataType":"binary","data":"!!"}"#)
                == .groupMessage(group: "g", fromUserId: nil, dataType: "binary", data: nil, sequenceId: nil))
        #expect(
            ServiceFrame.parse(#"{"type":"message","from":"server","dataType":"text","data":"x","sequenceId":9}"#) == .serverMessage(sequenceId: 9))
        #expect(ServiceFrame.parse(#"{"type":"ack","ackId":1,"success":true}"#) == .other)
        #expect(ServiceFrame.parse(#"{"type":"system","event":"disconnected","message":"bye"}"#) == .disconnected(message: "bye"))
        if case .malformed = ServiceFrame.parse("[1]") {} else { Issue.record("an array is not a frame") }
        if case .malformed(_, let id) = ServiceFrame.parse(
            #"{"type":"message","from":"group","group":"g","dataType":"text","data":5,"sequenceId":3}"#)
        {
            #expect(id == 3, "its sequence id still counts")
        } else {
            Issue.record("text data must be a string")
        }
    }

    @Test func sequenceIdsAreTrackedAndAcknowledged() {
        let session = ReliableSession(url: "ws://h/client/hubs/chat?access_token=a.b.c")
        #expect(session.recoveryURL == nil)
        #expect(session.connected(connectionId: "c/1", reconnectionToken: "t+1") == .started)
        #expect(session.recoveryURL == "ws://h/client/hubs/chat?access_token=a.b.c&awps_connection_id=c%2F1&awps_reconnection_token=t%2B1")
        #expect(session.arrival(1) == .new)
        session.handedOn(1)
        #expect(session.arrival(1) == .duplicate)
        #expect(session.arrival(4) == .gap(missing: 2))
        session.handedOn(2)
        #expect(session.pendingAck == 2)
        session.acknowledged(2)
        #expect(session.pendingAck == nil)
        session.socketOpened()
        #expect(session.pendingAck == 2, "confirmed again on a new socket")
        #expect(session.connected(connectionId: "c/1", reconnectionToken: "t2") == .same)
        #expect(session.recoveryURL?.hasSuffix("awps_reconnection_token=t2") == true)
        #expect(session.connected(connectionId: "c3", reconnectionToken: "t3") == .replaced, "another connection is a new session")
        #expect(session.arrival(1) == .new, "its ids start again")
        #expect(session.recoveryURL?.contains("awps_connection_id=c3&awps_reconnection_token=t3") == true)
    }

    @Test func configMistakesAreReported() {
        let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
        let root = reader.root(yaml: "hub: 1bad\ngroups: [a, a, ' ']\ncolour: red\nconnectionString: nope\nconnectTimeout: 0s\n")!
        _ = GroupListenerSourceFactory().makeSource(name: "l", settings: root, context: AdapterContext(logger: quiet, environment: [:]))
        let text = reader.issues.map(\.description).joined(separator: "\n")
        #expect(text.contains("'1bad'") || text.contains("hub name"), "\(text)")
        #expect(text.contains("whitespace") || text.contains("group name"), "\(text)")
        #expect(text.contains("connectTimeout must be at least 1s"))
        #expect(text.contains("colour"))
        #expect(text.contains("listed twice"))
        #expect(text.contains("invalid connection string"))
        let other = ConfigReader(environment: [:], baseDirectory: "/tmp")
        _ = GroupListenerSourceFactory().makeSource(
            name: "l", settings: other.root(yaml: "hub: chat\n")!, context: AdapterContext(logger: quiet, environment: [:]))
        #expect(other.issues.map(\.description).joined().contains("missing required key 'groups'"))
    }
}

/// A listener in this process against the embedded hub, whose socket goes through a proxy
/// that the tests cut.
@Suite(.serialized) struct GroupListenerHubTests {
    /// What a listener handed on, in order.
    final class Collected: Sendable {
        let messages = Mutex<[Message]>([])
        var count: Int { messages.withLock { $0.count } }
        var emitter: DeliveryEmitter {
            DeliveryEmitter { delivery in
                self.messages.withLock { $0.append(delivery.message) }
                delivery.ack()
            }
        }
        var texts: [String] { messages.withLock { $0.map { String(buffer: $0.payload) } } }
    }

    func hub(_ body: (LocalHub, ConnectionString) async throws -> Void) async throws {
        var configuration = LocalHubConfiguration(accessKeys: [AccessKey("listener-test-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ0")])
        configuration.port = 0
        let hub = LocalHub(configuration: configuration, logger: quiet)
        let running = Task { try await hub.run() }
        defer { running.cancel() }
        try await body(hub, try ConnectionString(parsing: try await hub.connectionString()))
    }

    func sender(_ cs: ConnectionString, user: String) async throws -> TestWebSocket {
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: user, roles: ["webpubsub.sendToGroup"], groups: [],
            expiresIn: .seconds(600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        _ = await socket.expect(type: "system", event: "connected")
        return socket
    }

    /// A listener on group `room` of hub `chat` whose socket goes through a proxy the test can cut.
    func listenThroughProxy(_ cs: ConnectionString) async throws -> (TCPProxy, GroupListenerSource, Collected, Task<Void, any Error>) {
        let hubPort = Int(cs.endpoint.split(separator: ":").last!)!
        let proxy = try await TCPProxy(to: hubPort)
        var settings = GroupListenerSource.Settings(hub: "chat", groups: ["room"])
        settings.connectionString = try ConnectionString(endpoint: "http://127.0.0.1:\(proxy.port)", accessKey: cs.accessKey)
        let listener = GroupListenerSource(name: "listen", settings: settings, logger: quiet)
        let collected = Collected()
        let running = Task { try await listener.run(emit: collected.emitter) }
        #expect(await eventually { listener.healthProblem == nil })
        return (proxy, listener, collected, running)
    }

    func send(_ socket: TestWebSocket, _ text: String, ackId: Int) async {
        socket.send(
            json: .object([
                ("type", .string("sendToGroup")), ("group", .string("room")), ("dataType", .string("text")), ("data", .string(text)),
                ("ackId", .number(String(ackId))),
            ]))
        _ = await socket.expect(type: "ack")
    }

    @Test func aDroppedSocketIsRecoveredAndNothingIsLostOrRepeated() async throws {
        try await hub { hub, cs in
            let (proxy, listener, collected, running) = try await listenThroughProxy(cs)
            let alice = try await sender(cs, user: "alice")
            let bob = try await sender(cs, user: "bob")
            var resentBefore = -1
            for i in 0..<60 {
                await send(i % 2 == 0 ? alice : bob, "m\(i)", ackId: i + 1)
                if i == 20 {
                    // Mid-chat, the link breaks; the chat goes on while the listener recovers.
                    proxy.cut()
                }
                if i == 40 {
                    // Once more after it recovered and confirmed what it has: nothing is resent.
                    #expect(await eventually { listener.counters.recoveries.load(ordering: .relaxed) == 1 })
                    try await Task.sleep(for: .milliseconds(600))
                    resentBefore = listener.counters.duplicates.load(ordering: .relaxed)
                    proxy.cut()
                }
            }
            #expect(await eventually(timeout: .seconds(30)) { collected.count >= 60 }, "got \(collected.count)")
            try await Task.sleep(for: .milliseconds(300))
            #expect(collected.texts == (0..<60).map { "m\($0)" }, "each once, in order")
            let users = collected.messages.withLock { $0.map { $0.headers["userId"] ?? "?" } }
            #expect(users == (0..<60).map { $0 % 2 == 0 ? "alice" : "bob" })
            #expect(
                collected.messages.withLock {
                    $0.allSatisfy { $0.key == $0.headers["userId"] && $0.headers["group"] == "room" && $0.headers["wps-mirrored-from"] == "chat" }
                })
            #expect(listener.counters.recoveries.load(ordering: .relaxed) >= 2)
            #expect(listener.counters.duplicates.load(ordering: .relaxed) == resentBefore, "sequenceAck reached the hub")
            #expect(listener.counters.gaps.load(ordering: .relaxed) == 0)
            #expect(proxy.accepted >= 3)
            print(
                "listener: recoveries \(listener.counters.recoveries.load(ordering: .relaxed)), resent duplicates skipped \(listener.counters.duplicates.load(ordering: .relaxed))"
            )
            #expect(await stop(running))
            await alice.close()
            await bob.close()
            await proxy.stop()
            _ = hub
        }
    }

    /// Cancels a running listener and waits (bounded) until `run` returned.
    func stop(_ running: Task<Void, any Error>) async -> Bool {
        let done = Atomic<Bool>(false)
        running.cancel()
        let waiter = Task {
            _ = try? await running.value
            done.store(true, ordering: .relaxed)
        }
        _ = waiter
        return await eventually(timeout: .seconds(10)) { done.load(ordering: .relaxed) }
    }

    @Test func aHubThatNeverAnswersTheHandshakeTimesOutAndShutdownIsPrompt() async throws {
        let silent = try await SilentServer()
        var settings = GroupListenerSource.Settings(hub: "chat", groups: ["room"])
        settings.connectionString = try ConnectionString(endpoint: "http://127.0.0.1:\(silent.port)", accessKey: AccessKey("k"))
        settings.connectTimeout = .seconds(1)
        let listener = GroupListenerSource(name: "listen", settings: settings, logger: quiet)
        let running = Task { try await listener.run(emit: Collected().emitter) }
        #expect(
            await eventually(timeout: .seconds(10)) { listener.healthProblem?.contains("no WebSocket handshake within") == true },
            "\(listener.healthProblem ?? "-")")
        // Cancelled while the next handshake hangs: `run` returns anyway.
        try await Task.sleep(for: .milliseconds(1200))
        #expect(await stop(running))
        await silent.stop()
    }

    @Test func aRecoveryTheHubRefusesStartsANewConnection() async throws {
        try await hub { hub, cs in
            let (proxy, listener, collected, running) = try await listenThroughProxy(cs)
            let client = WebPubSubServiceClient(connectionString: cs, logger: quiet)
            let alice = try await sender(cs, user: "alice")
            await send(alice, "one", ackId: 1)
            #expect(await eventually { collected.count == 1 })
            // The link breaks and, before the listener is back, the session is closed: its
            // recovery is answered with 1008, so it starts afresh.
            proxy.cut()
            try await client.closeUserConnections(hub: "chat", userId: "wps-bridge", reason: "test")
            #expect(await eventually { listener.counters.gaps.load(ordering: .relaxed) == 1 })
            #expect(await eventually { (try? await client.userExists(hub: "chat", userId: "wps-bridge")) == true })
            await send(alice, "two", ackId: 2)
            #expect(await eventually { collected.count == 2 })
            #expect(collected.texts == ["one", "two"])
            #expect(listener.counters.recoveries.load(ordering: .relaxed) == 0)
            #expect(await stop(running))
            await alice.close()
            await proxy.stop()
            try await client.shutdown()
        }
    }

    @Test func aClosedSessionGetsANewConnectionAndServerMessagesAreSkipped() async throws {
        try await hub { hub, cs in
            let listener = GroupListenerSource(
                name: "listen",
                settings: {
                    var s = GroupListenerSource.Settings(hub: "chat", groups: ["room"])
                    s.connectionString = cs
                    return s
                }(),
                logger: quiet)
            let collected = Collected()
            let running = Task { try await listener.run(emit: collected.emitter) }
            #expect(await eventually { listener.healthProblem == nil })
            let client = WebPubSubServiceClient(connectionString: cs, logger: quiet)
            // A REST send has no sender: skipped (it could be this bridge's own route).
            try await client.sendToGroup(hub: "chat", group: "room", payload: ByteBuffer(string: "from a server"), contentType: "text/plain")
            let alice = try await sender(cs, user: "alice")
            await send(alice, "before", ackId: 1)
            #expect(await eventually { collected.count == 1 })
            // The service ends the session (1008): a new connection, in the group from its token.
            try await client.closeUserConnections(hub: "chat", userId: "wps-bridge", reason: "test")
            #expect(await eventually { listener.counters.gaps.load(ordering: .relaxed) == 1 })
            #expect(await eventually { (try? await client.userExists(hub: "chat", userId: "wps-bridge")) == true })
            await send(alice, "after", ackId: 2)
            #expect(await eventually { collected.count == 2 })
            #expect(collected.texts == ["before", "after"])
            #expect(listener.counters.skipped.load(ordering: .relaxed) == 1)
            #expect(await stop(running))
            await alice.close()
            try await client.shutdown()
        }
    }
}
