import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing

/// `wps-bridge run` with Redis sources and sinks against `redis-server`, checked with
/// `redis-cli` and a WebSocket subscriber of `wps-bridge hub`.
@Suite(.serialized) struct RedisEndToEndTests {
    func subscribers(_ redis: RedisServer, channel: String) async throws -> Int {
        let out = try await redis.raw(["PUBSUB", "NUMSUB", channel])
        return Int(out.split(separator: "\n").last ?? "") ?? 0
    }

    /// `count` entries `{"n": i}` on stream `events`.
    func addEntries(_ redis: RedisServer, count: Int) async throws {
        try await addEntries(redis, 0..<count)
    }

    /// Entries `{"n": i}` for each i of `range` on stream `events`.
    func addEntries(_ redis: RedisServer, _ range: Range<Int>) async throws {
        let commands = range.map { "XADD events * data '{\"n\":\($0)}'" }.joined(separator: "\n") + "\n"
        let added = try await runProcess("/usr/bin/redis-cli", ["-p", String(redis.port)], input: commands)
        #expect(added.status == 0)
    }

    /// Nothing of group `bridge` is left pending on stream `events`: every entry was acknowledged.
    func expectAllAcknowledged(_ redis: RedisServer) async throws {
        let pending = try await redis.raw(["XPENDING", "events", "bridge"])
        #expect(pending.split(separator: "\n").first == "0", "pending: \(pending)")
    }

    func numbers(_ messages: [JSONValue]) -> [Int] {
        messages.compactMap { m in
            guard case .number(let n)? = m["data"]?["n"] else { return nil }
            return Int(n)
        }
    }

    /// A pretty-printed JSON payload that cannot be delivered goes to the dead-letter file as
    /// one line; fed back through stdin (routed where it can go) it is delivered as it was.
    @Test func aDeadLetterFileReplaysThroughStdin() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let subscriber = try await hub.subscriber(hub: "chat", group: "replayed")
        let dir = try TestEnvironment.temporaryDirectory()
        let bridge = try BridgeProcess(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - {name: live, type: redis, url: "\(redis.url)", channels: [orders]}
            deadLetter: {type: file, path: \(dir)/dead.ndjson}
            routes:
              - {from: live, to: [{hub: chat, group: "{json.missing}"}]}
            """, in: dir)
        #expect(try await eventually { try await subscribers(redis, channel: "orders") == 1 }, "\(bridge.logTail)")
        let pretty = "{\n  \"order\": 42,\n  \"note\": \"two  spaces\\nand a line\"\n}\n"
        _ = try await redis.cli("PUBLISH", "orders", pretty)
        #expect(
            await eventually { ((try? String(contentsOfFile: dir + "/dead.ndjson", encoding: .utf8)) ?? "").hasSuffix("\n") }, "\(bridge.logTail)")
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        let dead = try String(contentsOfFile: dir + "/dead.ndjson", encoding: .utf8)
        #expect(dead.split(separator: "\n").count == 1, "one line: \(dead)")

        let replayDir = try TestEnvironment.temporaryDirectory()
        try """
        webpubsub:
          connectionString: "\(hub.connectionString)"
        sources: [{name: replay, type: stdin}]
        deadLetter: {type: file, path: \(replayDir)/dead.ndjson}
        routes: [{from: replay, to: [{hub: chat, group: replayed}]}]
        """.write(toFile: replayDir + "/bridge.yaml", atomically: true, encoding: .utf8)
        let replay = try await runProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", replayDir + "/bridge.yaml"], input: dead)
        #expect(replay.status == 0, "\(replay.stderr.suffix(2000))")
        let got = await subscriber.messages(1)
        #expect(got.first?["data"] == (try JSONValue(parsing: pretty)), "\(got)")
        #expect(!FileManager.default.fileExists(atPath: replayDir + "/dead.ndjson"))
        await redis.stop()
        await hub.stop()
    }

    @Test func channelAndPatternMessagesArriveAndASubscriptionSurvivesARestart() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let subscriber = try await hub.subscriber(hub: "chat", group: "feed")
        let bridge = try BridgeProcess(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: live
                type: redis
                url: \(redis.url)
                channels: [news]
                patterns: ["alerts.*"]
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: live
                to:
                  - {hub: chat, group: feed}
            """, in: try TestEnvironment.temporaryDirectory())
        #expect(try await eventually { try await subscribers(redis, channel: "news") == 1 }, "\(bridge.logTail)")
        _ = try await redis.cli("PUBLISH", "news", #"{"n":1}"#)
        _ = try await redis.cli("PUBLISH", "alerts.fire", "fire!")
        // Two channels are two lanes: either may come first.
        let first = await subscriber.messages(2).sorted { ($0["dataType"]?.stringValue ?? "") < ($1["dataType"]?.stringValue ?? "") }
        #expect(first.map { $0["data"] } == [.object([("n", .number("1"))]), .string("fire!")], "\(bridge.logTail)")
        #expect(first.map { $0["dataType"] } == [.string("json"), .string("text")])

        try await redis.restart()
        #expect(try await eventually { try await subscribers(redis, channel: "news") == 1 }, "\(bridge.logTail)")
        _ = try await redis.cli("PUBLISH", "news", #"{"n":2}"#)
        let after = await subscriber.messages(1)
        #expect(numbers(after) == [2], "\(bridge.logTail)")
        #expect(bridge.log.contains("resubscribed"))
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await redis.stop()
        await hub.stop()
    }

    @Test func aKilledStreamConsumerLosesNothing() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let count = 1000
        try await addEntries(redis, count: count)
        let subscriber = try await hub.subscriber(hub: "chat", group: "stream")
        let dir = try TestEnvironment.temporaryDirectory()
        let yaml = """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: events
                type: redis-stream
                url: \(redis.url)
                streams: [events]
                group: bridge
                consumer: c1
                startFrom: earliest
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: stream}
            delivery:
              concurrency: 2
              maxInFlight: 8
            """
        let first = try BridgeProcess(yaml, in: dir)
        var got = await subscriber.messages(200)
        first.kill()
        _ = await first.exitStatus()
        let beforeKill = got.count
        #expect(numbers(got) == Array(0..<beforeKill), "in order until the kill")
        let second = try BridgeProcess(yaml, in: dir)
        while Set(numbers(got)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(30)) {
            got.append(m)
        }
        let distinct = Set(numbers(got))
        #expect(distinct.count == count, "missing \(Set(0..<count).subtracting(distinct).sorted().prefix(20)); \(second.logTail)")
        print(
            "redis stream kill test: \(beforeKill) delivered before SIGKILL, \(got.count) in all, \(got.count - distinct.count) duplicates of \(count)"
        )
        second.terminate()
        #expect(await second.exitStatus() == 0)
        try await expectAllAcknowledged(redis)
        await redis.stop()
        await hub.stop()
    }

    @Test func aPoisonEntryIsDeadLetteredAfterMaxDeliveries() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        _ = try await redis.cli("XGROUP", "CREATE", "orders", "bridge", "0", "MKSTREAM")
        let poisonId = try await redis.raw(["XADD", "orders", "*", "data", #"{"n":1}"#, "key", "k1", "trace", "t-1"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
        // Another consumer took it and never acknowledged it; it has been tried 7 times.
        _ = try await redis.cli("XREADGROUP", "GROUP", "bridge", "crashed", "COUNT", "1", "STREAMS", "orders", ">")
        _ = try await redis.cli("XCLAIM", "orders", "bridge", "crashed", "0", poisonId, "RETRYCOUNT", "7")
        _ = try await redis.cli("XADD", "orders", "*", "data", #"{"n":2}"#)
        let subscriber = try await hub.subscriber(hub: "chat", group: "orders")
        let bridge = try BridgeProcess(
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: orders
                type: redis-stream
                url: \(redis.url)
                streams: [orders]
                group: bridge
                minIdle: 0s
                maxDeliveries: 3
            routes:
              - from: orders
                to:
                  - {hub: chat, group: orders}
            deadLetter:
              type: redis-stream
              url: \(redis.url)
              stream: dead
            """, in: try TestEnvironment.temporaryDirectory())
        let got = await subscriber.messages(1)
        #expect(numbers(got) == [2], "\(bridge.logTail)")
        #expect(try await eventually { try await redis.raw(["XLEN", "dead"]).hasPrefix("1") }, "\(bridge.logTail)")
        let dead = try await redis.raw(["XRANGE", "dead", "-", "+"]).split(separator: "\n").map(String.init)
        func field(_ name: String) -> String? { dead.firstIndex(of: name).map { dead[$0 + 1] } }
        #expect(field("data") == #"{"n":1}"#)
        #expect(field("key") == "k1")
        #expect(field("trace") == "t-1")
        #expect(field("wps-error")?.contains("maxDeliveries") == true, "\(dead)")
        #expect(field("wps-source") == "orders/orders@\(poisonId)")
        #expect(try await eventually { try await redis.raw(["XPENDING", "orders", "bridge"]).hasPrefix("0") })
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        await redis.stop()
        await hub.stop()
    }

    @Test func anEntryInFlightLongerThanMinIdleIsNotCountedAsDeliveredAgain() async throws {
        let redis = try await RedisServer()
        try await withRecordingServer { server in
            // Web PubSub is unavailable for a while: the entry stays in flight, retried.
            server.enqueue(.init(status: 503), .init(status: 503), .init(status: 503), .init(status: 503), .init(status: 503), .init(status: 503))
            _ = try await redis.cli("XGROUP", "CREATE", "jobs", "bridge", "0", "MKSTREAM")
            _ = try await redis.cli("XADD", "jobs", "*", "data", #"{"n":1}"#)
            let bridge = try BridgeProcess(
                """
                webpubsub:
                  connectionString: "\(server.connectionString)"
                  hub: chat
                sources:
                  - {name: jobs, type: redis-stream, url: "\(redis.url)", streams: [jobs], group: bridge, minIdle: 1s, maxDeliveries: 2}
                routes:
                  - {from: jobs, to: [{group: g}]}
                delivery:
                  retry: {maxAttempts: 20, initialBackoff: 600ms, maxBackoff: 600ms}
                deadLetter: {type: file, path: dead.ndjson}
                """, in: try TestEnvironment.temporaryDirectory())
            #expect(await eventually { server.requests.count >= 3 }, "\(bridge.logTail)")
            // Several minIdle periods passed while it was in flight (each one a reclaim pass):
            // still one delivery, not one per pass.
            let pending = try await redis.raw(["XPENDING", "jobs", "bridge", "-", "+", "10"]).split(separator: "\n").map(String.init)
            #expect(pending.count == 4 && pending[3] == "1", "\(pending)")
            #expect(try await eventually { try await redis.raw(["XPENDING", "jobs", "bridge"]).hasPrefix("0") }, "\(bridge.logTail)")
            #expect(server.requests.count == 7, "sent once it could be, not dead-lettered")
            bridge.terminate()
            #expect(await bridge.exitStatus() == 0)
        }
        await redis.stop()
    }
}
