import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSub

/// Scale-out (issue 21): replicas of the bridge as consumers of one Redis Streams group.
extension RedisEndToEndTests {
    /// Three replicas (consumers c1, c2, c3) read one stream; c1 is killed (SIGKILL) mid-stream
    /// and a fourth started. The entries c1 had read but not acknowledged are claimed by the
    /// others once idle for `minIdle` (`XAUTOCLAIM`): every entry arrives, nothing stays pending,
    /// and the duplicates (c1's deliveries it could not acknowledge) are counted and printed.
    @Test func replicasShareAStreamAndADeadOnesEntriesAreClaimed() async throws {
        let redis = try await RedisServer()
        let hub = try await HubProcess()
        let count = 3000
        try await addEntries(redis, count: count)
        let subscriber = try await hub.subscriber(hub: "chat", group: "stream")
        func yaml(_ consumer: String) -> String {
            """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: events
                type: redis-stream
                url: \(redis.url)
                streams: [events]
                group: bridge
                consumer: \(consumer)
                startFrom: earliest
                minIdle: 2s
                count: 20
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: events
                to:
                  - {hub: chat, group: stream}
            delivery:
              concurrency: 2
              maxInFlight: 8
            """
        }
        var replicas: [(name: String, dir: String, bridge: BridgeProcess)] = []
        for name in ["c1", "c2", "c3"] {
            let dir = try TestEnvironment.temporaryDirectory()
            replicas.append((name, dir, try BridgeProcess(yaml(name), in: dir)))
        }
        var got = await subscriber.messages(600)
        replicas[0].bridge.kill()
        _ = await replicas[0].bridge.exitStatus()
        let beforeKill = got.count
        let dir = try TestEnvironment.temporaryDirectory()
        replicas.append(("c4", dir, try BridgeProcess(yaml("c4"), in: dir)))
        while Set(numbers(got)).count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(30)) {
            got.append(m)
        }
        let distinct = Set(numbers(got))
        #expect(distinct.count == count, "missing \(Set(0..<count).subtracting(distinct).sorted().prefix(20))")
        // Each replica joined the group as a consumer of its own.
        let consumers = try await redis.raw(["XINFO", "CONSUMERS", "events", "bridge"])
        for name in ["c1", "c2", "c3", "c4"] { #expect(consumers.contains(name), "\(consumers)") }
        // The dead one's pending entries were claimed by another replica.
        let logs = replicas.dropFirst().map { (try? String(contentsOfFile: $0.dir + "/bridge.log", encoding: .utf8)) ?? "" }
        #expect(logs.contains { $0.contains("redis stream entries reclaimed") }, "no replica claimed c1's entries")
        print(
            "redis stream replica test: 3 replicas; \(beforeKill) delivered before SIGKILL, \(got.count) in all, \(got.count - distinct.count) duplicates of \(count)"
        )
        for replica in replicas.dropFirst() {
            replica.bridge.terminate()
            #expect(await replica.bridge.exitStatus() == 0)
        }
        try await expectAllAcknowledged(redis)
        await redis.stop()
        await hub.stop()
    }
}

extension RedisEndToEndTests {
    /// The event handler is stateless: two replicas behind one URL (a proxy that alternates per
    /// request, as a load balancer does) mirror one client's events into one Redis stream. Each
    /// event is in the stream once, both replicas answered some of them, and when one is killed
    /// (SIGKILL) the other answers the hub's retries: nothing is lost, duplicates are printed.
    @Test func eventHandlerReplicasBehindOneURLMirrorEveryEventOnce() async throws {
        let redis = try await RedisServer()
        let ports = [try TestEnvironment.freePort(), try TestEnvironment.freePort()]
        let proxy = try await RoundRobinProxy(backends: ports)
        let hub = try await HubProcess(arguments: ["--event-handler", "chat=http://127.0.0.1:\(proxy.port)/eventhandler/{hub}"])
        var replicas: [BridgeProcess] = []
        for port in ports {
            replicas.append(
                try BridgeProcess(
                    """
                    webpubsub: {connectionString: "\(hub.connectionString)", hub: chat}
                    server: {listen: "127.0.0.1:\(port)"}
                    events:
                      - {hub: chat, events: [chat], to: {type: redis-stream, url: "\(redis.url)", stream: mirrored}}
                    """, in: try TestEnvironment.temporaryDirectory()))
        }
        for port in ports { #expect(await eventually { TestEnvironment.isListening(port) }, "replica on \(port) did not listen") }
        let cs = try ConnectionString(parsing: hub.connectionString)
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "alice", roles: [], groups: [], expiresIn: .seconds(600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        #expect(await socket.expect(type: "system", event: "connected") != nil)
        // Each entry's `data` field is the CloudEvent in JSON; the client's text is its `data`.
        func mirroredTexts() async -> [String] {
            let entries = (try? await redis.raw(["XRANGE", "mirrored", "-", "+"])) ?? ""
            return entries.split(separator: "\n").filter { $0.hasPrefix("{") }.compactMap {
                try? JSONValue.parse(Array($0.utf8))["data"]?.stringValue
            }
        }
        let count = 200
        func send(_ range: Range<Int>) {
            for i in range { socket.send(#"{"type":"event","event":"chat","dataType":"text","data":"m-\#(i)"}"#) }
        }
        send(0..<count)
        #expect(await eventually { Set(await mirroredTexts()).count >= count / 4 })
        // One replica dies mid-stream: the proxy sends to the other (an event the dead one took
        // but did not answer is answered 502, and the hub's retry reaches the other).
        replicas[0].kill()
        _ = await replicas[0].exitStatus()
        _ = await eventually(timeout: .seconds(60)) { Set(await mirroredTexts()).count >= count }
        let data = await mirroredTexts()
        #expect(Set(data).count == count, "missing \(Set((0..<count).map { "m-\($0)" }).subtracting(data).sorted().prefix(10))")
        let forwarded = proxy.forwarded
        #expect(forwarded.allSatisfy { $0 > 0 }, "each replica answers a share: \(forwarded)")
        print(
            "event handler replica test: \(count) events, \(data.count) mirrored, \(data.count - Set(data).count) doubled; requests per replica \(forwarded)"
        )
        await socket.close()
        // The hub first: its `disconnected` event goes upstream through the proxy.
        await hub.stop()
        replicas[1].terminate()
        #expect(await replicas[1].exitStatus() == 0)
        await proxy.stop()
        await redis.stop()
    }
}
