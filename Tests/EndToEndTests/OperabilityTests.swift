import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSub

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What an operator sees of a running bridge: `/metrics`, `/readyz`, and its logs.
@Suite(.serialized) struct OperabilityTests {
    func get(_ url: String) async throws -> (status: Int, body: String) {
        let (data, response) = try await URLSession.shared.data(from: URL(string: url)!)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    /// `name{labels} value` lines of the Prometheus text format, by `name{labels}`.
    func samples(_ text: String) -> [String: Double] {
        var result: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            result[String(line[..<space])] = value
        }
        return result
    }

    /// `server.adminListen`: the operator's endpoints on their own port; the port the service
    /// reaches serves the event handler (and `/healthz`) alone.
    @Test func adminEndpointsMoveToTheirOwnListener() async throws {
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let adminPort = try TestEnvironment.freePort()
        let dir = try TestEnvironment.temporaryDirectory()
        try """
        webpubsub: {embedded: {port: \(hubPort), accessKey: admin-test-key-0123456789ABCDEFGHIJ}, hub: chat}
        server: {listen: "127.0.0.1:\(serverPort)", adminListen: "127.0.0.1:\(adminPort)", reload: true, reloadToken: secret-token}
        events: [{hub: chat, events: [message], to: {type: stdout}}]
        """.write(toFile: dir + "/bridge.yaml", atomically: true, encoding: .utf8)
        let bridge = try ChildProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", dir + "/bridge.yaml"], currentDirectory: dir)
        #expect(await eventually { TestEnvironment.isListening(serverPort) && TestEnvironment.isListening(adminPort) })
        for path in ["/metrics", "/readyz", "/-/reload"] {
            #expect(try await get("http://127.0.0.1:\(serverPort)\(path)").status == 404, "\(path) on the public port")
        }
        #expect(try await get("http://127.0.0.1:\(serverPort)/healthz").status == 200)
        #expect(try await get("http://127.0.0.1:\(adminPort)/metrics").status == 200)
        #expect(try await get("http://127.0.0.1:\(adminPort)/readyz").body.contains("ready"))
        #expect(try await get("http://127.0.0.1:\(adminPort)/-/reload").status == 405, "POST only, but there")
        // The event handler is on the public port only.
        var options = URLRequest(url: URL(string: "http://127.0.0.1:\(serverPort)/eventhandler/chat")!)
        options.httpMethod = "OPTIONS"
        options.setValue("127.0.0.1", forHTTPHeaderField: "WebHook-Request-Origin")
        let (_, handshake) = try await URLSession.shared.data(for: options)
        #expect((handshake as? HTTPURLResponse)?.statusCode == 200)
        options.url = URL(string: "http://127.0.0.1:\(adminPort)/eventhandler/chat")!
        let (_, onAdmin) = try await URLSession.shared.data(for: options)
        #expect((onAdmin as? HTTPURLResponse)?.statusCode == 404)
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
    }

    @Test func metricsCountWhatWasSentAndReceived() async throws {
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "metrics-test-key-0123456789ABCDEFGHIJ"
        let dir = try TestEnvironment.temporaryDirectory()
        try """
        webpubsub: {embedded: {port: \(hubPort), accessKey: \(key)}, hub: chat}
        server: {listen: "127.0.0.1:\(serverPort)"}
        sources: [{name: in, type: stdin, format: lines}]
        routes: [{name: to-demo, from: in, to: [{group: demo}]}]
        deadLetter: {type: file, path: dead.ndjson}
        """.write(toFile: dir + "/bridge.yaml", atomically: true, encoding: .utf8)
        let bridge = try ChildProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", dir + "/bridge.yaml"], currentDirectory: dir)
        #expect(await eventually { TestEnvironment.isListening(hubPort) && TestEnvironment.isListening(serverPort) })
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "u", roles: [], groups: ["demo"], expiresIn: .seconds(600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        #expect(await socket.expect(type: "system", event: "connected") != nil)
        let count = 25
        for i in 0..<count { bridge.write("line \(i)\n") }
        #expect(await socket.messages(count).count == count)

        let (status, text) = try await get("http://127.0.0.1:\(serverPort)/metrics")
        #expect(status == 200)
        let m = samples(text)
        let target = #"route="to-demo",target="hub chat group demo""#
        #expect(m[#"wps_bridge_messages_received_total{source="in"}"#] == Double(count), "\(text)")
        #expect(m["wps_bridge_sends_total{\(target),outcome=\"delivered\"}"] == Double(count))
        #expect(m["wps_bridge_sends_total{\(target),outcome=\"dead_lettered\"}"] == 0)
        #expect(m["wps_bridge_delivery_latency_seconds_count{\(target)}"] == Double(count))
        #expect(m["wps_bridge_sends_in_flight{\(target)}"] == 0)
        #expect(m[#"wps_hub_messages_received_total{hub="chat",from="rest"}"#] == Double(count))
        #expect(m[#"wps_hub_messages_sent_total{hub="chat"}"#] == Double(count))
        #expect(m[#"wps_hub_connections{hub="chat"}"#] == 1)
        #expect(m[#"wps_hub_groups{hub="chat"}"#] == 1)
        let ready = try await get("http://127.0.0.1:\(serverPort)/readyz")
        let readyBody = try JSONValue(parsing: ready.body)
        #expect(ready.status == 200 && readyBody["ready"] == .bool(true))
        await socket.close()
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        bridge.closeInput()
    }

    @Test func readinessFollowsRedisKafkaAndWebPubSub() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let kafkaPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub: {connectionString: "\(hub.connectionString)", hub: chat}
            server: {listen: "127.0.0.1:\(serverPort)"}
            sources:
              - {name: live, type: redis, url: "\(redis.url)", channels: [news]}
              - name: orders
                type: kafka
                brokers: "127.0.0.1:\(kafkaPort)"
                topics: [orders]
                group: readiness
                librdkafka: {topic.metadata.refresh.interval.ms: 1000}
            routes:
              - {from: live, to: [{group: g}]}
              - {from: orders, to: [{group: g}]}
            deadLetter: {type: file, path: dead.ndjson}
            """, in: dir)
        func readiness() async -> (status: Int, problems: [String]) {
            guard let (status, body) = try? await get("http://127.0.0.1:\(serverPort)/readyz"), let json = try? JSONValue(parsing: body),
                case .array(let items)? = json["problems"]
            else { return (0, []) }
            return (status, items.compactMap(\.stringValue))
        }
        // No broker yet: not ready, and the body says which source.
        #expect(
            await eventually {
                let r = await readiness()
                return r.status == 503 && r.problems.contains { $0.hasPrefix("source orders") }
            }, "\(bridge.logTail)")
        let broker = try await KafkaBroker(port: kafkaPort)
        // The consumer needs its topic too (until then it reports "unknown topic").
        try await KafkaTool.create(broker.brokers, topic: "orders", partitions: 1)
        let kafkaReady = await eventually(timeout: .seconds(60)) { await readiness().status == 200 }
        let afterKafka = await readiness().problems
        #expect(kafkaReady, "\(afterKafka)\n\(bridge.logTail)")
        // Redis goes away, and comes back.
        await redis.stop()
        #expect(
            await eventually {
                let r = await readiness()
                return r.status == 503 && r.problems.contains { $0.hasPrefix("source live") }
            }, "\(bridge.logTail)")
        try await redis.restart()
        let redisReady = await eventually { await readiness().status == 200 }
        let afterRedis = await readiness().problems
        #expect(redisReady, "\(afterRedis)")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await broker.stop()
        await redis.stop()
        await hub.stop()
    }

    @Test func readinessSaysWhenWebPubSubRefusesTheKey() async throws {
        let hub = try await HubProcess()
        let serverPort = try TestEnvironment.freePort()
        let wrong = hub.connectionString.replacingOccurrences(of: hub.accessKey, with: "not-the-key-0123456789")
        let bridge = try BridgeProcess(
            """
            webpubsub: {connectionString: "\(wrong)", hub: chat}
            server: {listen: "127.0.0.1:\(serverPort)"}
            sources: [{name: in, type: stdin}]
            routes: [{from: in, to: [{group: g}]}]
            deadLetter: {type: file, path: dead.ndjson}
            """, in: try TestEnvironment.temporaryDirectory())
        let refused = await eventually {
            guard let (status, body) = try? await get("http://127.0.0.1:\(serverPort)/readyz") else { return false }
            return status == 503 && body.contains("webpubsub: the service refuses the access key (HTTP 401)")
        }
        #expect(refused, "\(bridge.logTail)")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await hub.stop()
    }

    @Test func logsCarryNoKeyTokenOrSecret() async throws {
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "SECRETKEY-logs-0123456789ABCDEFGHIJKLMN"
        let handlerToken = "SECRETTOKEN-handler-42"
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub: {embedded: {port: \(hubPort), accessKey: \(key)}, hub: chat}
            server: {listen: "127.0.0.1:\(serverPort)"}
            eventHandler: {authToken: \(handlerToken)}
            sources:
              - {name: room, type: webpubsub, hub: chat, groups: [room]}
            events:
              - {hub: chat, events: [chat, "group:room", connected], to: {type: file, path: events.ndjson}}
            """, in: dir, logLevel: "trace")
        #expect(await eventually { bridge.log.contains("listener connected") }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "alice", roles: ["webpubsub.sendToGroup"], groups: [],
            expiresIn: .seconds(600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.reliable.webpubsub.azure.v1")
        #expect(await socket.expect(type: "system", event: "connected") != nil)
        socket.send(#"{"type":"event","event":"chat","dataType":"text","data":"hi","ackId":1}"#)
        socket.send(#"{"type":"sendToGroup","group":"room","dataType":"text","data":"hello","ackId":2}"#)
        #expect(await eventually { ((try? String(contentsOfFile: dir + "/events.ndjson", encoding: .utf8)) ?? "").split(separator: "\n").count >= 3 })
        await socket.close()
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        let log = bridge.log
        #expect(log.count > 10_000, "trace logging ran")
        #expect(!log.contains(key), "the access key")
        #expect(!log.contains(handlerToken), "the event handler's shared secret")
        #expect(!log.contains(access.token), "a client token")
        for parameter in ["access_token=", "awps_reconnection_token=", "code="] {
            #expect(shown(parameter, in: log).isEmpty, "\(parameter) values must be redacted: \(shown(parameter, in: log).prefix(3))")
        }
    }

    /// What follows each `name` in `text` that is not `***`.
    func shown(_ name: String, in text: String) -> [String] {
        var found: [String] = []
        var rest = Substring(text)
        while let range = rest.range(of: name) {
            let value = rest[range.upperBound...].prefix { !"&\" ,;)]}\n".contains($0) }
            if !value.isEmpty && value != "***" { found.append(String(value.prefix(12))) }
            rest = rest[range.upperBound...]
        }
        return found
    }
}

extension OperabilityTests {
    @Test func aReloadKeepsTheRunningConfigWhenBrokenAndAppliesAGoodOne() async throws {
        let hubPort = try TestEnvironment.freePort()
        let serverPort = try TestEnvironment.freePort()
        let key = "reload-test-key-0123456789ABCDEFGHIJ"
        let redis = try await RedisServer()
        let dir = try TestEnvironment.temporaryDirectory()
        let head = """
            webpubsub: {embedded: {port: \(hubPort), accessKey: \(key)}, hub: chat}
            server: {listen: "127.0.0.1:\(serverPort)", reload: true, reloadToken: reload-secret}
            deadLetter: {type: file, path: dead.ndjson}

            """
        let bridge = try BridgeProcess(
            head + """
                sources:
                  - {name: in, type: stdin, format: lines}
                routes:
                  - {name: typed, from: in, to: [{group: one}]}
                """, in: dir)
        #expect(await eventually { TestEnvironment.isListening(hubPort) && TestEnvironment.isListening(serverPort) }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(hubPort);AccessKey=\(key);Version=1.0;")
        func subscriber(_ group: String) async throws -> TestWebSocket {
            let access = try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: nil, roles: [], groups: [group], expiresIn: .seconds(600))
            let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
            _ = await socket.expect(type: "system", event: "connected")
            return socket
        }
        let one = try await subscriber("one")
        let two = try await subscriber("two")
        let news = try await subscriber("news")
        bridge.write("first\n")
        #expect(await one.expect(type: "message")?["data"] == .string("first"))

        // A broken file: refused with its report, and the running routes go on.
        try "sources: [{name: in, type: stdin}]\nroutes: [{from: nowhere, to: [{group: x}]}]\n".write(
            toFile: dir + "/bridge.yaml", atomically: true, encoding: .utf8)
        bridge.signal(SIGHUP)
        #expect(await eventually { bridge.log.contains("config reload refused") }, "\(bridge.logTail)")
        #expect(bridge.log.contains("nowhere"), "the report names the problem")
        bridge.write("second\n")
        #expect(await one.expect(type: "message")?["data"] == .string("second"))

        // A good one: the stdin route now goes to group two, and a Redis source comes in; stdin
        // (unchanged) keeps its place in the input.
        try
            (head + """
                sources:
                  - {name: in, type: stdin, format: lines}
                  - {name: live, type: redis, url: "\(redis.url)", channels: [news]}
                routes:
                  - {name: typed, from: in, to: [{group: two}]}
                  - {name: wire, from: live, to: [{group: news}]}
                """).write(toFile: dir + "/bridge.yaml", atomically: true, encoding: .utf8)
        bridge.signal(SIGHUP)
        #expect(await eventually { bridge.log.contains("started live") }, "\(bridge.logTail)")
        bridge.write("third\n")
        #expect(await two.expect(type: "message")?["data"] == .string("third"))
        #expect(await eventually { (try? await redis.cli("PUBSUB", "NUMSUB", "news"))?.hasSuffix("1\n") == true })
        _ = try await redis.cli("PUBLISH", "news", #"{"headline":"reloaded"}"#)
        #expect(await news.expect(type: "message")?["data"]?["headline"] == .string("reloaded"))
        #expect(one.drain().isEmpty, "nothing more for the old route")

        // The same through POST /-/reload: without the token, 401; with it, a broken file is a
        // 400 with the report.
        try "webpubsub: {}\n".write(toFile: dir + "/bridge.yaml", atomically: true, encoding: .utf8)
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(serverPort)/-/reload")!)
        request.httpMethod = "POST"
        let (_, anonymous) = try await URLSession.shared.data(for: request)
        #expect((anonymous as? HTTPURLResponse)?.statusCode == 401)
        request.setValue("Bearer reload-secret", forHTTPHeaderField: "Authorization")
        let (body, response) = try await URLSession.shared.data(for: request)
        #expect((response as? HTTPURLResponse)?.statusCode == 400, "\(String(decoding: body, as: UTF8.self))")
        #expect(String(decoding: body, as: UTF8.self).contains("refused"))
        bridge.write("fourth\n")
        #expect(await two.expect(type: "message")?["data"] == .string("fourth"))

        for socket in [one, two, news] { await socket.close() }
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await redis.stop()
    }
}
