package import BridgeConfig
import BridgeCore
import BridgeObservability
import Foundation
package import Logging
import Metrics
import Synchronization

/// Leadership through a Redis key: `SET key token NX PX ttl` takes it, a script that checks the
/// token renews it (`PEXPIRE` only while the key still holds this replica's token: the fencing
/// check) and deletes it at shutdown.
///
/// The leader stops leading on its own once `ttl` minus a fifth has passed since the start of its
/// last successful renewal, before the key can expire in Redis: a leader cut off from Redis stops
/// forwarding before another can take over, so two never forward at once. A follower tries to
/// take the key every fifth of `ttl`; after a leader's death (no release) the key expires and one
/// follower leads within `ttl` and a fifth.
package final class RedisLeadership: Leadership, HealthReporting {
    package struct Settings: Sendable, Equatable {
        package var url: RedisEndpoint
        package var key = "wps-bridge:leader"
        package var ttl: Duration = .seconds(5)
        /// This replica's name in the key's value (and the logs): `host:pid` by default.
        package var id: String

        package init(url: RedisEndpoint, id: String) {
            self.url = url
            self.id = id
        }
    }

    package let settings: Settings
    private let token: String
    private let logger: Logger
    private let state = Mutex(State())
    private let gauge: Gauge

    private struct State {
        /// Leading until then (a local deadline shorter than the key's life in Redis).
        var leadsUntil: ContinuousClock.Instant?
        var problem: String?
        /// "this replica stands by" was said (or "no longer leads").
        var stoodBy = false
    }

    package init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        token = settings.id + "/" + UUID().uuidString
        gauge = Gauge(label: MetricName.leader, dimensions: [("lease", "redis \(settings.key)")])
        gauge.record(0)
    }

    package var isLeader: Bool {
        state.withLock { s in s.leadsUntil.map { $0 > .now } ?? false }
    }

    package var description: String {
        "lease '\(settings.key)' in Redis \(settings.url) (ttl \(settings.ttl)) as \(settings.id)"
    }

    package var healthProblem: String? { state.withLock { $0.problem } }

    /// Takes the key when free, renews it when this replica holds it (the fencing check); 1 when
    /// this replica holds it afterwards, else the holder's token.
    static let claimScript = """
        if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
        local holder = redis.call('get', KEYS[1])
        if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
        return holder
        """
    static let releaseScript = """
        if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end
        """

    package func run() async throws {
        let client = RedisCommandClient(url: settings.url)
        defer { client.close() }
        let ttlMs = String(Int64(settings.ttl / .milliseconds(1)))
        // Leading for 4/5 of the ttl after a renewal began: the key lives a full ttl after Redis ran it.
        let leadFor = settings.ttl * 4 / 5
        logger.info("campaigning for leadership", metadata: [LogKey.lease: "\(settings.key)", LogKey.replica: "\(settings.id)"])
        while !Task.isCancelled {
            let started = ContinuousClock.now
            let wasLeader = isLeader
            do {
                let reply = try await client.command(["EVAL", Self.claimScript, "1", settings.key, token, ttlMs])
                if case .integer(1) = reply {
                    lead(until: started + leadFor)
                } else if case .error(let message) = reply {
                    throw RedisError(.reply, message)
                } else if wasLeader {
                    follow(because: "the lease is held by another replica (it expired before it was renewed)")
                } else {
                    standBy(holder: reply.text)
                }
                state.withLock { $0.problem = nil }
            } catch {
                let problem = "Redis \(settings.url): \(error)"
                if state.withLock({ s in
                    defer { s.problem = problem }
                    return s.problem != problem
                }) {
                    logger.warning("the leadership lease cannot be reached", metadata: [LogKey.error: "\(problem)"])
                }
                if wasLeader, !isLeader { follow(because: "the lease was not renewed in time") }
            }
            try? await Task.sleep(until: started + (isLeader ? settings.ttl / 3 : settings.ttl / 5), clock: .continuous)
        }
        // Stop leading first, then free the key: the next leader starts after this one stopped.
        let led = state.withLock { s in
            defer { s.leadsUntil = nil }
            return s.leadsUntil != nil
        }
        gauge.record(0)
        if led {
            // Not cancelled with this task: the key is freed even when the run ends by cancellation.
            let (key, token) = (settings.key, token)
            let released = await Task.detached { try? await client.command(["EVAL", Self.releaseScript, "1", key, token]) }.value
            logger.info(
                "leadership released",
                metadata: [LogKey.lease: "\(settings.key)", LogKey.detail: "\(released == .integer(1) ? "key deleted" : "key no longer held")"])
        }
    }

    private func lead(until deadline: ContinuousClock.Instant) {
        let became = state.withLock { s in
            defer { s.leadsUntil = deadline }
            return s.leadsUntil == nil || s.leadsUntil! <= .now
        }
        if became {
            gauge.record(1)
            logger.notice("this replica leads", metadata: [LogKey.lease: "\(settings.key)", LogKey.replica: "\(settings.id)"])
        }
    }

    /// Said once, the first time the lease is found held by another replica (`holder`: its token,
    /// the id, "/" and a UUID; nil when the key expired in between).
    private func standBy(holder: String?) {
        let first = state.withLock { s in
            defer { s.stoodBy = true }
            return !s.stoodBy
        }
        guard first else { return }
        let leader = holder.map { String($0[..<($0.lastIndex(of: "/") ?? $0.endIndex)].prefix(200)) }
        logger.info(
            "this replica stands by",
            metadata: [
                LogKey.lease: "\(settings.key)", LogKey.replica: "\(settings.id)", LogKey.leader: "\(leader ?? "none (the key just expired)")",
            ])
    }

    private func follow(because reason: String) {
        state.withLock { s in
            s.leadsUntil = nil
            s.stoodBy = true
        }
        gauge.record(0)
        logger.warning("this replica no longer leads", metadata: [LogKey.lease: "\(settings.key)", LogKey.reason: "\(reason)"])
    }
}

extension RedisLeadership.Settings {
    /// `coordination.redis`: `url` (and the other connection keys), `key`, `ttl` (1s to 60s).
    /// Unless given, the timeouts are at most a third of the ttl: a renewal that hangs on a
    /// stalled server would otherwise hold the next claim back by the default 10 s.
    package static func read(_ m: ConfigMapping, id: String) -> Self? {
        m.checkKeys(redisEndpointKeys + ["key", "ttl"], what: "coordination.redis")
        guard let url = readRedisEndpoint(m) else { return nil }
        var settings = Self(url: url, id: id)
        if let key = m.nonEmptyString("key") { settings.key = key }
        settings.ttl =
            m.duration("ttl", within: .seconds(1) ... .seconds(60), why: "a leader renews every third of it and a dead one is replaced after it")
            ?? settings.ttl
        if !m.has("commandTimeout") { settings.url.commandTimeout = min(settings.url.commandTimeout, settings.ttl / 3) }
        if !m.has("connectTimeout") { settings.url.connectTimeout = min(settings.url.connectTimeout, settings.ttl / 3) }
        return settings
    }
}
