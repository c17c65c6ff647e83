import AsyncHTTPClient
import BridgeJSON
import Foundation
import NIOCore

/// The leader-election scenario of the scale-out tests, for either lease backend: two replicas
/// hear one Redis channel (`replicas: many`) and forward to a hub group; the leader is stopped
/// with SIGTERM (it releases the lease), a third replica starts, the new leader is killed with
/// SIGKILL. A message is published every 10 ms or so throughout; what the subscriber got tells
/// how long nobody led and whether anything went twice.
package struct LeaderFailover: Sendable {
    /// A stretch in which nobody forwarded: the messages published in it, and how long it was.
    package struct Gap: Sendable, CustomStringConvertible {
        package var missing: Int
        package var duration: Duration
        package var description: String { "\(missing) unled (\(duration))" }
    }

    /// Messages published, in order; and what the subscriber got, in arrival order.
    package var published: Int
    package var received: [Int]
    /// What arrived of the first 50, published while both replicas ran.
    package var steady: [Int]
    package var handover: Gap
    package var failover: Gap
    /// The stopped leader's exit status and whether it logged the release.
    package var stoppedLeaderStatus: Int32
    package var stoppedLeaderReleased: Bool
    /// The survivor's `/readyz` and `/metrics` at the end.
    package var readyz: String
    package var metrics: String
    /// The exit statuses of the replicas stopped with SIGTERM at the end.
    package var finalStatuses: [Int32]
    /// The "this replica stands by" log lines of all replicas.
    package var standingBy: [String]

    package var doubled: [Int] { Dictionary(received.map { ($0, 1) }, uniquingKeysWith: +).filter { $0.value > 1 }.keys.sorted() }
    package var distinct: Int { Set(received).count }

    /// Runs the scenario. `coordination(id)` is the `coordination:` block of replica `id`, as YAML
    /// lines indented by two spaces; `ttl` the lease's, in seconds.
    package static func run(
        redis: RedisServer, hub: HubProcess, ttl: Double, coordination: (String) -> String
    ) async throws -> LeaderFailover {
        let subscriber = try await hub.subscriber(hub: "chat", group: "ticks")
        var replicas: [(port: Int, bridge: BridgeProcess)] = []
        func start(_ id: String) throws {
            let port = try TestEnvironment.freePort()
            let bridge = try BridgeProcess(
                """
                webpubsub: {connectionString: "\(hub.connectionString)", hub: chat}
                server: {listen: "127.0.0.1:\(port)"}
                coordination:
                \(coordination(id))
                  id: \(id)
                sources:
                  - {name: live, type: redis, url: "\(redis.url)", channels: [ticks], replicas: many}
                routes:
                  - {from: live, to: [{group: ticks}]}
                """, in: try TestEnvironment.temporaryDirectory())
            replicas.append((port, bridge))
        }
        func leaders() -> [Int] {
            replicas.indices.filter { replicas[$0].bridge.isRunning && replicas[$0].bridge.log.contains("this replica leads") }
        }
        /// How many times any replica said it leads.
        func leadsSaid() -> Int {
            replicas.reduce(0) { $0 + $1.bridge.log.components(separatedBy: "this replica leads").count - 1 }
        }
        func leader() async throws -> Int {
            guard await eventually(timeout: .seconds(Int64(ttl * 3) + 10), { leaders().count == 1 }), let index = leaders().first else {
                throw TestEnvironmentError("no single leader: \(leaders()) \(replicas.map(\.bridge.logTail))")
            }
            return index
        }
        // Every other replica took its place (Tansu answers a follower's SyncGroup sent before the
        // leader's only after 5 s: a leader stopped meanwhile was replaced after 7 s, not 3).
        func settled(around leader: Int) async throws {
            let standing = {
                replicas.indices.allSatisfy { i in
                    i == leader || !replicas[i].bridge.isRunning || replicas[i].bridge.log.contains("this replica stands by")
                }
            }
            guard await eventually(timeout: .seconds(Int64(ttl * 3) + 10), standing) else {
                throw TestEnvironmentError("a replica did not stand by: \(replicas.map(\.bridge.logTail))")
            }
        }
        func subscribed(_ count: Int) async -> Bool {
            await eventually { (Int((try? await redis.raw(["PUBSUB", "NUMSUB", "ticks"]))?.split(separator: "\n").last ?? "") ?? 0) >= count }
        }
        var published: [(n: Int, at: ContinuousClock.Instant)] = []
        func publish(_ range: Range<Int>) async throws {
            for n in range {
                published.append((n, .now))
                _ = try await redis.cli("PUBLISH", "ticks", #"{"n":\#(n)}"#)
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        func numbers(_ messages: [JSONValue]) -> [Int] {
            messages.compactMap { if case .number(let n) = $0["data"]?["n"] { Int(n) } else { nil } }
        }

        try start("r1")
        try start("r2")
        guard await subscribed(2) else { throw TestEnvironmentError("the replicas did not subscribe") }
        let first = try await leader()
        try await settled(around: first)
        // Steady: one replica forwards, the other hears and drops.
        try await publish(0..<50)
        let steady = numbers(await subscriber.messages(50, idle: .seconds(5)))

        // Publishes until another replica says it leads (or three ttls and 10 s passed), then 50
        // more: the gap ends with the new leader's first message, however long the handover took.
        func publishThroughHandover() async throws {
            let before = leadsSaid()
            let deadline = ContinuousClock.now + .seconds(ttl * 3 + 10)
            while leadsSaid() == before, ContinuousClock.now < deadline { try await publish(published.count..<(published.count + 1)) }
            try await publish(published.count..<(published.count + 50))
        }

        // A graceful stop hands over at once: the lease is released.
        replicas[first].bridge.terminate()
        let stoppedStatus = await replicas[first].bridge.exitStatus()
        let released = replicas[first].bridge.log.contains("leadership released")
        let handoverStart = published.count
        try await publishThroughHandover()
        // A SIGKILLed leader holds the lease until it expires.
        try start("r3")
        guard await subscribed(2) else { throw TestEnvironmentError("r3 did not subscribe") }
        let second = try await leader()
        try await settled(around: second)
        try await publish(published.count..<(published.count + 50))
        replicas[second].bridge.kill()
        _ = await replicas[second].bridge.exitStatus()
        let killedAt = published.count
        try await publishThroughHandover()
        let received = steady + numbers(await subscriber.messages(published.count - 50, idle: .seconds(3)))

        let got = Set(received)
        func gap(after index: Int) -> Gap {
            let before = published[..<index].last { got.contains($0.n) }
            let after = published[index...].first { got.contains($0.n) }
            guard let before, let after else { return Gap(missing: Int.max, duration: .seconds(3600)) }
            return Gap(missing: after.n - before.n - 1, duration: after.at - before.at)
        }
        let survivor = try await leader()
        let port = replicas[survivor].port
        let readyz = try await HTTPClient.shared.execute(.init(url: "http://127.0.0.1:\(port)/readyz"), timeout: .seconds(5))
        let readyzBody = String(buffer: try await readyz.body.collect(upTo: 65536))
        let metrics = try await HTTPClient.shared.execute(.init(url: "http://127.0.0.1:\(port)/metrics"), timeout: .seconds(5))
        let metricsText = String(buffer: try await metrics.body.collect(upTo: 1 << 20))
        var statuses: [Int32] = []
        for index in replicas.indices where replicas[index].bridge.isRunning {
            replicas[index].bridge.terminate()
            statuses.append(await replicas[index].bridge.exitStatus())
        }
        return LeaderFailover(
            published: published.count, received: received, steady: steady, handover: gap(after: handoverStart), failover: gap(after: killedAt),
            stoppedLeaderStatus: stoppedStatus, stoppedLeaderReleased: released, readyz: readyzBody, metrics: metricsText,
            finalStatuses: statuses,
            standingBy: replicas.flatMap { $0.bridge.log.split(separator: "\n").filter { $0.contains("this replica stands by") }.map(String.init) })
    }
}
