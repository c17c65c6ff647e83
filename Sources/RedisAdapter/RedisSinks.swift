package import BridgeConfig
package import BridgeCore
import Logging
import NIOCore

/// `type: redis` as a sink: PUBLISH each record's payload to a (templated) channel.
package final class RedisPublishSink: SinkAdapter {
    let channel: Template
    let client: RedisCommandClient

    init(url: RedisEndpoint, channel: Template) {
        self.channel = channel
        self.client = RedisCommandClient(url: url)
    }

    package var description: String { "redis channel '\(channel)' at \(client.url)" }

    package func write(_ record: SinkRecord) async throws {
        let name = try channel.render(record)
        _ = try await client.command([Array("PUBLISH".utf8), Array(name.utf8), Array(record.payload.readableBytesView)])
    }

    package func close() async throws { client.close() }
}

/// `type: redis-stream` as a sink: XADD each record to a (templated) stream, with the payload
/// in `data`, its `dataType`, its `key`, and each header as a field of its own.
package final class RedisStreamSink: SinkAdapter {
    let stream: Template
    let maxLen: Int?
    let client: RedisCommandClient

    init(url: RedisEndpoint, stream: Template, maxLen: Int?) {
        self.stream = stream
        self.maxLen = maxLen
        self.client = RedisCommandClient(url: url)
    }

    package var description: String { "redis stream '\(stream)' at \(client.url)" }

    package func write(_ record: SinkRecord) async throws {
        let name = try stream.render(record)
        var args: [[UInt8]] = [Array("XADD".utf8), Array(name.utf8)]
        if let maxLen { args += [Array("MAXLEN".utf8), Array("~".utf8), Array(String(maxLen).utf8)] }
        args += [
            Array("*".utf8), Array("data".utf8), Array(record.payload.readableBytesView), Array("dataType".utf8),
            Array(record.dataType.rawValue.utf8),
        ]
        if let key = record.key { args += [Array("key".utf8), Array(key.utf8)] }
        for (name, value) in record.headers.sorted(by: { $0.key < $1.key }) where !["data", "dataType", "key"].contains(name) {
            args += [Array(name.utf8), Array(value.utf8)]
        }
        _ = try await client.command(args)
    }

    package func close() async throws { client.close() }
}

/// `{type: redis, url, channel}`.
package struct RedisPublishSinkFactory: SinkFactory {
    package init() {}
    package var typeName: String { "redis" }
    package var summary: String { "PUBLISH to a Redis channel (url, channel)" }

    package func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)? {
        settings.checkKeys(redisEndpointKeys + ["channel"], what: "a redis sink")
        let url = readRedisEndpoint(settings)
        let channel = settings.sinkTemplate("channel", required: true)
        guard let url, let channel else { return nil }
        return RedisPublishSink(url: url, channel: channel)
    }
}

/// `{type: redis-stream, url, stream, maxLen}`.
package struct RedisStreamSinkFactory: SinkFactory {
    package init() {}
    package var typeName: String { "redis-stream" }
    package var summary: String { "XADD to a Redis stream (url, stream, maxLen)" }

    package func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)? {
        settings.checkKeys(redisEndpointKeys + ["stream", "maxLen"], what: "a redis-stream sink")
        let url = readRedisEndpoint(settings)
        let stream = settings.sinkTemplate("stream", required: true)
        let maxLen = settings.int("maxLen", range: 1...Int(Int32.max))
        guard let url, let stream else { return nil }
        return RedisStreamSink(url: url, stream: stream, maxLen: maxLen)
    }
}
