import BridgeConfig
import BridgeCore
import BridgeJSON
import BridgeTestSupport
import CHiredis
import Foundation
import NIOCore
import Testing

@testable import RedisAdapter

/// Issue 22: Redis as it runs in production. URLs (rediss://, IPv6, databases), TLS against
/// `redis-server --tls-port` with certificates made by openssl, mutual TLS, ACL users, and the
/// timeouts that find a server that stopped answering.
@Suite struct RedisURLTests {
    @Test func tlsIPv6AndDatabasesAreParsed() throws {
        let tls = try RedisEndpoint(parsing: "rediss://app:p%40ss@cache.example.net:6380/3")
        #expect(tls.tls == RedisTLS() && tls.host == "cache.example.net" && tls.port == 6380 && tls.db == 3)
        #expect(tls.user == "app" && tls.password == "p@ss")
        #expect(tls.description == "rediss://app@cache.example.net:6380/3")
        let v6 = try RedisEndpoint(parsing: "redis://[::1]:6390/0")
        #expect(v6.host == "::1" && v6.port == 6390 && v6.db == 0 && v6.tls == nil)
        #expect(v6.description == "redis://[::1]:6390")
        #expect(try RedisEndpoint(parsing: "redis://[fe80::1]").port == 6379)
        #expect(try RedisEndpoint(parsing: "redis://:secret@[2001:db8::5]:7000").description == "redis://***@[2001:db8::5]:7000")
    }

    @Test(arguments: [
        ("redis://::1:6379", "in brackets"),
        ("redis://[::1:6379", "closing ']'"),
        ("redis://[::1]x", "only ':port'"),
        ("redis://[cache]:6379", "not an IPv6 address"),
        ("redis://h:0", "not a port number"),
        ("redis://h:http", "not a port number"),
        ("redis://h/-1", "not a database number"),
        ("redis://h/db", "not a database number"),
        ("redis://h?timeout=1", "URL options"),
        ("redis://ho st", "control character or space"),
        ("redis://", "no host"),
        ("http://u:secret@h", "not a redis:// or rediss://"),
    ])
    func badURLsAreRefusedWithTheReason(url: String, reason: String) {
        #expect {
            try RedisEndpoint(parsing: url)
        } throws: { error in
            let text = "\(error)"
            return text.contains(reason) && !text.contains("secret")
        }
    }

    @Test func tlsSettingsMistakesAreReported() throws {
        let pki = try TestPKI()
        func issues(_ yaml: String) -> String { readSink(RedisPublishSinkFactory(), yaml + "channel: c\n").1.joined(separator: "\n") }
        #expect(issues("url: redis://h\ntls: {caFile: \(pki.caFile)}\n").contains("tls settings need a rediss:// URL"))
        #expect(issues("url: rediss://h\ntls: {caFile: /nonexistent/ca.pem}\n").contains("tls.caFile '/nonexistent/ca.pem'"))
        #expect(issues("url: rediss://h\ntls: {certFile: \(pki.certFile)}\n").contains("certFile and tls.keyFile go together"))
        let client = try pki.client()
        #expect(issues("url: rediss://h\ntls: {certFile: \(client.certFile), keyFile: \(pki.keyFile)}\n").contains("is not the key of"))
        #expect(issues("url: rediss://h\ntls: {insecureSkipVerify: true, caFile: \(pki.caFile)}\n").contains("checks no certificate"))
        #expect(issues("url: rediss://h\ntls: {insecureSkipVerify: yes please}\n").contains("insecureSkipVerify"))
        #expect(issues("url: rediss://h\ntls: {cafile: x}\n").contains("cafile"))
        #expect(issues("url: redis://h\ncommandTimeout: 0s\n").contains("commandTimeout must be from 100ms to 300s"))
        #expect(issues("url: redis://h\nconnectTimeout: soon\n").contains("not a duration"))
        // Spelled out, insecureSkipVerify is accepted, with a warning.
        let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
        let root = try #require(reader.root(yaml: "url: rediss://h\ntls: {insecureSkipVerify: true}\nchannel: c\n"))
        #expect(RedisPublishSinkFactory().makeSink(settings: root, context: AdapterContext(logger: quiet, environment: [:])) != nil)
        #expect(reader.issues.isEmpty, "\(reader.issues)")
        #expect(reader.warnings.contains { "\($0)".contains("accepts any certificate") }, "\(reader.warnings)")
        // Timeouts and files relative to the config are read.
        let (sink, fine) = readSink(
            RedisPublishSinkFactory(),
            "url: rediss://h\ntls: {caFile: \(pki.caFile), serverName: cache.internal}\nconnectTimeout: 2s\ncommandTimeout: 750ms\nchannel: c\n")
        #expect(fine.isEmpty && sink != nil, "\(fine)")
    }
}

@Test func theLeaseTimeoutsFollowItsTTLUnlessGiven() throws {
    func read(_ yaml: String) throws -> RedisLeadership.Settings? {
        let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
        let settings = RedisLeadership.Settings.read(try #require(reader.root(yaml: yaml)), id: "a")
        #expect(reader.issues.isEmpty, "\(reader.issues)")
        return settings
    }
    let short = try #require(try read("url: redis://h\nttl: 3s\n"))
    #expect(short.url.commandTimeout == .seconds(1) && short.url.connectTimeout == .seconds(1))
    let given = try #require(try read("url: redis://h\nttl: 3s\ncommandTimeout: 5s\nconnectTimeout: 2s\n"))
    #expect(given.url.commandTimeout == .seconds(5) && given.url.connectTimeout == .seconds(2))
    let long = try #require(try read("url: redis://h\nttl: 60s\n"))
    #expect(long.url.commandTimeout == .seconds(10) && long.url.connectTimeout == .seconds(5))
}

@Test func versionNamesHiredisAndTLS() async throws {
    let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["--version"])
    #expect(result.status == 0)
    #expect(result.stdout.contains("hiredis 1.") && result.stdout.contains("with TLS"), "\(result.stdout)")
    #expect(hiredisVersion.hasPrefix("hiredis \(wps_hiredis_major())."))
}

/// Against `redis-server` with TLS; the plain port stays for `redis-cli`.
@Suite(.serialized) struct RedisTLSTests {
    func connect(
        _ redis: RedisServer, host: String = "127.0.0.1", user: String? = nil, password: String? = nil, _ tls: (inout RedisTLS) -> Void = { _ in }
    ) throws -> RedisBlockingConnection {
        var settings = RedisTLS()
        tls(&settings)
        var endpoint = RedisEndpoint(host: host, port: redis.tlsPort!, user: user, password: password, tls: settings)
        endpoint.commandTimeout = .seconds(5)
        return try RedisBlockingConnection(endpoint)
    }

    func refusal(_ body: () throws -> Void) -> RedisError? {
        do {
            try body()
            return nil
        } catch {
            return error as? RedisError
        }
    }

    @Test func certificatesAreCheckedAndTheReasonIsNamed() async throws {
        let pki = try TestPKI()
        let redis = try await RedisServer(tls: pki)
        defer { Task { await redis.stop() } }
        let trusted = try connect(redis) { $0.caFile = pki.caFile }
        #expect(try trusted.command(["SET", "over", "tls"]) == .status("OK"))
        #expect(try trusted.command(["GET", "over"]) == .string(Array("tls".utf8)))
        // The plain port sees what went over TLS: the same server.
        #expect(try await redis.raw(["GET", "over"]) == "tls\n")

        // By name: the certificate holds DNS:localhost.
        #expect(try connect(redis, host: "localhost") { $0.caFile = pki.caFile }.command(["PING"]) == .status("PONG"))

        // Another CA: not trusted, and the error says what to give.
        let other = try TestPKI()
        let untrusted = refusal { _ = try connect(redis) { $0.caFile = other.caFile } }
        #expect(untrusted?.kind == .tls)
        #expect(
            untrusted?.message.contains("not trusted") == true && untrusted?.message.contains("tls.caFile") == true,
            "\(String(describing: untrusted))")
        // The system's roots do not hold the test CA either.
        #expect(refusal { _ = try connect(redis) }?.kind == .tls)

        // A certificate for other names: refused by name, accepted with serverName set to one it holds.
        let elsewhere = try TestPKI(names: ["DNS:cache.internal"])
        let renamed = try await RedisServer(tls: elsewhere)
        defer { Task { await renamed.stop() } }
        let mismatch = refusal { _ = try connect(renamed) { $0.caFile = elsewhere.caFile } }
        #expect(mismatch?.kind == .tls && mismatch?.message.contains("not valid for '127.0.0.1'") == true, "\(String(describing: mismatch))")
        let named = try connect(renamed) {
            $0.caFile = elsewhere.caFile
            $0.serverName = "cache.internal"
        }
        #expect(try named.command(["PING"]) == .status("PONG"))
        // insecureSkipVerify takes any certificate.
        #expect(try connect(renamed) { $0.insecureSkipVerify = true }.command(["PING"]) == .status("PONG"))

        // TLS to a port that does not speak it: Redis waits for the rest of a "command" and
        // answers nothing, so the handshake times out (bounded by commandTimeout, not a hang)
        // and the error names both causes.
        var plain = RedisEndpoint(host: "127.0.0.1", port: redis.port, tls: RedisTLS())
        plain.commandTimeout = .seconds(2)
        let started = ContinuousClock.now
        let notTLS = refusal { _ = try RedisBlockingConnection(plain) }
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(notTLS?.kind == .connection && notTLS?.message.contains("does not serve TLS") == true, "\(String(describing: notTLS))")
    }

    @Test func mutualTLSAndAnACLUser() async throws {
        let pki = try TestPKI()
        let redis = try await RedisServer(tls: pki, clientCertificates: true, users: [.init("bridge", password: "s3cret")])
        defer { Task { await redis.stop() } }
        let client = try pki.client()
        // Without a client certificate the server ends the handshake.
        let anonymous = refusal { _ = try connect(redis, user: "bridge", password: "s3cret") { $0.caFile = pki.caFile }.command(["PING"]) }
        #expect(anonymous != nil)
        let withCertificate = try connect(redis, user: "bridge", password: "s3cret") {
            $0.caFile = pki.caFile
            $0.certFile = client.certFile
            $0.keyFile = client.keyFile
        }
        #expect(try withCertificate.command(["ACL", "WHOAMI"]) == .string(Array("bridge".utf8)))
        let wrongPassword = refusal {
            _ = try connect(redis, user: "bridge", password: "wrong") {
                $0.caFile = pki.caFile
                $0.certFile = client.certFile
                $0.keyFile = client.keyFile
            }
        }
        #expect(wrongPassword?.kind == .authentication, "\(String(describing: wrongPassword))")

        // The sinks over mutual TLS as the ACL user, configured as a user would.
        let yaml = """
            url: rediss://bridge:s3cret@127.0.0.1:\(redis.tlsPort!)
            tls: {caFile: \(pki.caFile), certFile: \(client.certFile), keyFile: \(client.keyFile)}

            """
        let (xadd, issues) = readSink(RedisStreamSinkFactory(), yaml + "stream: audit\n")
        #expect(issues.isEmpty, "\(issues)")
        let record = SinkRecord(payload: ByteBuffer(string: #"{"n":1}"#), dataType: .json, key: "k")
        try await #require(xadd).write(record)
        try await xadd?.close()
        let entry = try await redis.raw(["XRANGE", "audit", "-", "+"])
        #expect(entry.contains(#"{"n":1}"#), "\(entry)")
        let (publish, publishIssues) = readSink(RedisPublishSinkFactory(), yaml + "channel: news\n")
        #expect(publishIssues.isEmpty, "\(publishIssues)")
        try await #require(publish).write(record)  // nobody listens: PUBLISH answers 0, and that is fine
        try await publish?.close()
    }

    @Test func anIPv6Address() async throws {
        let redis = try await RedisServer(bind: ["127.0.0.1", "::1"])
        defer { Task { await redis.stop() } }
        let endpoint = try RedisEndpoint(parsing: "redis://[::1]:\(redis.port)/2")
        let connection = try RedisBlockingConnection(endpoint)
        #expect(try connection.command(["SET", "v6", "yes"]) == .status("OK"))
        #expect(try await redis.raw(["-n", "2", "GET", "v6"]) == "yes\n")
    }
}

/// The bridge over TLS, and a server that stops answering (SIGSTOP) and comes back (SIGCONT).
extension RedisEndToEndTests {
    @Test func pubSubAndStreamSourcesOverTLSSurviveAStalledServer() async throws {
        let pki = try TestPKI()
        let redis = try await RedisServer(tls: pki)
        let hub = try await HubProcess()
        let subscriber = try await hub.subscriber(hub: "chat", group: "redis")
        let dir = try TestEnvironment.temporaryDirectory()
        let endpoint = """
                url: rediss://127.0.0.1:\(redis.tlsPort!)
                tls: {caFile: \(pki.caFile)}
                connectTimeout: 1s
                commandTimeout: 1s
            """
        let yaml = """
            webpubsub:
              connectionString: "\(hub.connectionString)"
            sources:
              - name: live
                type: redis
            \(endpoint)
                channels: [news]
              - name: events
                type: redis-stream
            \(endpoint)
                streams: [events]
                group: bridge
                startFrom: earliest
            deadLetter: {type: file, path: dead.ndjson}
            routes:
              - from: live
                to:
                  - {hub: chat, group: redis}
              - from: events
                to:
                  - {hub: chat, group: redis}
            """
        try await addEntries(redis, 0..<100)
        let bridge = try BridgeProcess(yaml, in: dir)
        var got = await subscriber.messages(100)
        #expect(Set(numbers(got)) == Set(0..<100), "\(bridge.logTail)")
        #expect(try await eventually { try await redis.raw(["PUBSUB", "NUMSUB", "news"]).hasSuffix("1\n") })
        _ = try await redis.cli("PUBLISH", "news", #"{"n":1000}"#)
        got += await subscriber.messages(1)
        #expect(numbers(got).contains(1000), "pub/sub over TLS")

        // The server stops answering: both sources find out within their timeouts.
        redis.suspend()
        let stalledAt = ContinuousClock.now
        let noticed = await eventually(timeout: .seconds(20)) {
            let log = bridge.log
            return log.contains("no answer to PING within") && log.contains("no reply within")
        }
        let noticedAfter = ContinuousClock.now - stalledAt
        #expect(noticed, "the stalled server was not noticed:\n\(bridge.logTail)")
        // Still stopped: reconnecting connects (the kernel accepts) and then the TLS handshake
        // times out, as a connection problem (retried at once), not as a TLS one.
        let handshakes = await eventually(timeout: .seconds(15)) { bridge.log.contains("no answer to the TLS handshake within") }
        #expect(handshakes, "\(bridge.logTail)")
        #expect(!bridge.log.contains("TLS handshake failed"), "\(bridge.logTail)")
        redis.resume()
        // Back: the stream source reads on from its group (nothing lost), pub/sub resubscribes.
        try await addEntries(redis, 100..<200)
        #expect(try await eventually(timeout: .seconds(20)) { try await redis.raw(["PUBSUB", "NUMSUB", "news"]).hasSuffix("1\n") })
        _ = try await redis.cli("PUBLISH", "news", #"{"n":1001}"#)
        while !(Set(numbers(got)).isSuperset(of: 0..<200) && numbers(got).contains(1001)),
            let m = await subscriber.expect(type: "message", timeout: .seconds(30))
        {
            got.append(m)
        }
        let missing = Set(0..<200).subtracting(numbers(got))
        #expect(missing.isEmpty, "missing \(missing.sorted().prefix(20)):\n\(bridge.logTail)")
        #expect(numbers(got).contains(1001), "pub/sub after the stall")
        print(
            "redis stall test: SIGSTOP noticed by both sources within \(noticedAfter); 200 stream entries, \(missing.count) lost, \(numbers(got).count - Set(numbers(got)).count) duplicates"
        )
        bridge.terminate()
        #expect(await bridge.exitStatus() == 0)
        try await expectAllAcknowledged(redis)
        await redis.stop()
        await hub.stop()
    }
}
