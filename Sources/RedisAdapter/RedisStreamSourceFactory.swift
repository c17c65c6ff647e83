package import BridgeConfig
package import BridgeCore
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import Logging
import NIOCore
import Synchronization

/// `type: redis-stream` sources.
package struct RedisStreamSourceFactory: SourceFactory {
    package var replicaMode: ReplicaMode { .consumerGroup }
    package init() {}
    package var isAtLeastOnce: Bool { true }
    package var typeName: String { "redis-stream" }
    package var summary: String { "Redis Streams in a consumer group, at least once (url, streams, group)" }
    package var originFields: Set<String> { ["stream"] }

    package func makeSource(name: String, settings: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        settings.checkKeys(
            redisEndpointKeys + ["streams", "group", "consumer", "startFrom", "minIdle", "maxDeliveries", "count", "dataType", "fields"],
            what: "a redis-stream source")
        let url = readRedisEndpoint(settings)
        if settings.value("streams") == nil { settings.report("missing required key 'streams'") }
        let streams = settings.stringList("streams")
        if let streams, streams.isEmpty || streams.contains(where: \.isEmpty) || Set(streams).count != streams.count {
            settings.value("streams")?.report("streams must be distinct, non-empty names")
        }
        let group = settings.nonEmptyString("group", required: true)
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
        let consumer = settings.nonEmptyString("consumer") ?? "wps-bridge-\(host)"
        let startFrom = settings.enumeration("startFrom", StartFrom.self) ?? .latest
        let minIdle = settings.duration("minIdle") ?? .seconds(60)
        let maxDeliveries = settings.int("maxDeliveries", range: 1...1000) ?? 5
        let count = settings.int("count", range: 1...10_000) ?? 100
        let dataType = settings.enumeration("dataType", PayloadType.self) ?? .auto
        var fields = StreamFieldNames()
        if let map = settings.mapping("fields") {
            map.checkKeys(["data", "dataType", "key"], what: "fields")
            fields.data = map.nonEmptyString("data") ?? fields.data
            fields.dataType = map.nonEmptyString("dataType") ?? fields.dataType
            fields.key = map.nonEmptyString("key") ?? fields.key
            if Set([fields.data, fields.dataType, fields.key]).count != 3 { map.report("data, dataType and key must be different fields") }
        }
        guard let url, let streams, !streams.isEmpty, let group else { return nil }
        var s = RedisStreamSource.Settings(url: url, streams: streams, group: group, consumer: consumer)
        s.startFromEarliest = startFrom == .earliest
        s.minIdle = minIdle
        s.maxDeliveries = maxDeliveries
        s.count = count
        s.dataType = dataType
        s.fields = fields
        return RedisStreamSource(name: name, settings: s, logger: context.logger)
    }

    enum StartFrom: String, CaseIterable {
        case earliest, latest
    }
}
