import BridgeConfig
import BridgeCore
import BridgeTestSupport
import Foundation
import Logging
import NIOCore
import Synchronization
import Testing

@testable import RedisAdapter

let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

func readSink(_ factory: any SinkFactory, _ yaml: String) -> ((any SinkAdapter)?, [String]) {
    let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
    guard let root = reader.root(yaml: yaml) else { return (nil, reader.issues.map(\.description)) }
    let sink = factory.makeSink(settings: root, context: AdapterContext(logger: quiet, environment: [:]))
    return (sink, reader.issues.map(\.description))
}

func readSource(_ factory: any SourceFactory, _ yaml: String) -> ((any SourceAdapter)?, [String]) {
    let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
    guard let root = reader.root(yaml: yaml) else { return (nil, reader.issues.map(\.description)) }
    let source = factory.makeSource(name: "r", settings: root, context: AdapterContext(logger: quiet, environment: [:]))
    return (source, reader.issues.map(\.description))
}

@Suite struct RedisConfigTests {
    @Test func urlsAreParsedAndPasswordsKeptOutOfDescriptions() throws {
        let url = try RedisEndpoint(parsing: "redis://app:s%40cret@cache.internal:6380/2")
        #expect(url == RedisEndpoint(host: "cache.internal", port: 6380, user: "app", password: "s@cret", db: 2))
        #expect(!url.description.contains("cret"))
        #expect(try RedisEndpoint(parsing: "redis://:pw@h").password == "pw")
        #expect(try RedisEndpoint(parsing: "redis://h").port == 6379)
        #expect(try RedisEndpoint(parsing: "rediss://h").tls == RedisTLS())
        #expect(throws: RedisError.self) { try RedisEndpoint(parsing: "redis://h:99999") }
        #expect(throws: RedisError.self) { try RedisEndpoint(parsing: "http://h") }
    }

    @Test func mistakesAreReported() {
        let (source, issues) = readSource(RedisStreamSourceFactory(), "url: ftp://h\nstreams: []\nmaxDeliveries: 0\nfields: {data: x, key: x}\n")
        #expect(source == nil)
        let text = issues.joined(separator: "\n")
        #expect(text.contains("not a redis:// or rediss:// (TLS) URL"))
        #expect(text.contains("streams must be distinct"))
        #expect(text.contains("missing required key 'group'"))
        #expect(text.contains("out of range"))
        #expect(text.contains("must be different fields"))
        let (pubsub, more) = readSource(RedisPubSubSourceFactory(), "url: redis://h\n")
        #expect(pubsub == nil && more.joined().contains("needs 'channels' or 'patterns'"))
        let (_, sinkIssues) = readSink(RedisPublishSinkFactory(), "url: redis://h\nchannel: \"x-{channel}\"\n")
        #expect(sinkIssues.joined().contains("{channel} is not known when writing to a sink"))
    }
}

@Suite(.serialized) struct RedisSinkTests {
    @Test func publishAndXaddAreReadBack() async throws {
        let redis = try await RedisServer()
        // An independent subscriber: redis-cli.
        let out = Pipe()
        let listener = try ChildProcess("/usr/bin/redis-cli", ["-p", String(redis.port), "--raw", "SUBSCRIBE", "chat-lobby"], stdout: out)
        #expect(try await eventually { try await redis.raw(["PUBSUB", "NUMSUB", "chat-lobby"]).hasSuffix("1\n") })

        let (publish, issues) = readSink(RedisPublishSinkFactory(), "url: \(redis.url)\nchannel: \"chat-{header.hub}\"\n")
        #expect(issues.isEmpty, "\(issues)")
        let record = SinkRecord(
            payload: ByteBuffer(string: #"{"text":"hi"}"#), dataType: .json, key: "u1", headers: ["hub": "lobby", "ce-type": "message"])
        try await #require(publish).write(record)
        let received = Mutex(Data())
        let reader = Task.detached {
            while true {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                received.withLock { $0.append(chunk) }
            }
        }
        #expect(await eventually { String(decoding: received.withLock { $0 }, as: UTF8.self).contains(#"{"text":"hi"}"#) })
        listener.kill()
        _ = await listener.exitStatus()
        _ = await reader.value
        try await publish?.close()

        let (xadd, xaddIssues) = readSink(RedisStreamSinkFactory(), "url: \(redis.url)\nstream: \"events-{key}\"\nmaxLen: 1000\n")
        #expect(xaddIssues.isEmpty, "\(xaddIssues)")
        try await #require(xadd).write(record)
        try await xadd?.close()
        let lines = try await redis.raw(["XRANGE", "events-u1", "-", "+"]).split(separator: "\n").map(String.init)
        #expect(Array(lines.dropFirst()) == ["data", #"{"text":"hi"}"#, "dataType", "json", "key", "u1", "ce-type", "message", "hub", "lobby"])
        await redis.stop()
    }

    @Test func errorsSayWhatIsWrong() async throws {
        let redis = try await RedisServer(password: "right")
        #expect {
            _ = try RedisBlockingConnection(RedisEndpoint(host: "127.0.0.1", port: redis.port, password: "wrong"))
        } throws: { error in
            (error as? RedisError)?.kind == .authentication && "\(error)".contains("authentication failed")
        }
        let free = try TestEnvironment.freePort()
        #expect {
            _ = try RedisBlockingConnection(RedisEndpoint(host: "127.0.0.1", port: free))
        } throws: { error in
            (error as? RedisError)?.kind == .connection && "\(error)".contains("cannot connect")
        }
        let (made, _) = readSink(RedisStreamSinkFactory(), "url: redis://:right@127.0.0.1:\(redis.port)\nstream: plain\n")
        let sink = try #require(made)
        _ = try await redis.cli("-a", "right", "--no-auth-warning", "SET", "plain", "x")
        await #expect {
            try await sink.write(SinkRecord(payload: ByteBuffer(string: "x"), dataType: .text))
        } throws: { error in
            "\(error)".contains("WRONGTYPE")
        }
        try await sink.close()
        await redis.stop()
    }
}
