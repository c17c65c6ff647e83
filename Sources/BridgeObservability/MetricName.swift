/// The names of every metric the bridge and the embedded hub record, in one place, each with
/// its dimensions and what it counts (the table in docs/operations.md is this file).
package enum MetricName {
    // MARK: Bridge: sources and routing

    /// Counter; `source`. Messages taken from the source.
    package static let messagesReceived = "wps_bridge_messages_received_total"
    /// Counter; `source`. Messages that matched no route.
    package static let messagesUnrouted = "wps_bridge_messages_unrouted_total"
    /// Counter; `source`. Messages not sent back to the hub they came from.
    package static let loopsPrevented = "wps_bridge_loops_prevented_total"
    /// Counter; `source`. Redis and listener reconnects.
    package static let sourceReconnects = "wps_bridge_source_reconnects_total"
    /// Counter; `source`. Gaps in which messages were lost (Redis pub/sub, group listeners).
    package static let sourceGaps = "wps_bridge_source_gaps_total"
    /// Counter; `source`. Messages a follower heard and left to the leader (`replicas: many`).
    package static let messagesNotLeader = "wps_bridge_messages_not_leader_total"
    /// Gauge; `lease`. 1 while this replica leads (holds the coordination lease), else 0.
    package static let leader = "wps_bridge_leader"
    /// Gauge; `source`, `topic`, `partition`. High watermark minus the position not yet done.
    package static let kafkaConsumerLag = "wps_bridge_kafka_consumer_lag"

    // MARK: Bridge: delivery

    /// Counter; `route`, `target`, `outcome` (`delivered`, `dead_lettered`, `dropped`, `unsettled`).
    package static let sends = "wps_bridge_sends_total"
    /// Counter; `route`, `target`. Retries of a send.
    package static let sendRetries = "wps_bridge_send_retries_total"
    /// Meter; `route`, `target`. Sends queued or under way.
    package static let sendsInFlight = "wps_bridge_sends_in_flight"
    /// Timer (histogram); `route`, `target`. Source timestamp until the service accepted the send.
    package static let deliveryLatency = "wps_bridge_delivery_latency_seconds"
    /// Counter; `route`, `target`. Messages a newer one of the same `conflate.key` replaced in its batch.
    package static let messagesConflated = "wps_bridge_messages_conflated_total"
    /// Histogram; `route`, `target`. Messages per batched send.
    package static let batchMessages = "wps_bridge_batch_messages"
    /// Histogram; `route`, `target`. Bytes of a batched send's payload.
    package static let batchBytes = "wps_bridge_batch_bytes"
    /// Counter. 429 answers of the service.
    package static let sendsThrottled = "wps_bridge_sends_throttled_total"
    /// Gauge. The paced send rate, 0 while not pacing.
    package static let sendRateLimit = "wps_bridge_send_rate_limit"

    // MARK: Bridge: health and events

    /// Gauge; `component`. 1 when healthy (what `/readyz` checks).
    package static let componentReady = "wps_bridge_component_ready"
    /// Counter; `hub`, `type` (`connect`, `connected`, `disconnected`, `user`), `outcome`
    /// (`ok`, `failed`, `refused`). Event-handler requests.
    package static let events = "wps_bridge_events_total"

    // MARK: Embedded hub

    /// Gauge; `hub`. Open client connections.
    package static let hubConnections = "wps_hub_connections"
    /// Gauge; `hub`. Groups with at least one member.
    package static let hubGroups = "wps_hub_groups"
    /// Counter; `hub`, `from` (`rest`, `client`). Messages sent to the hub.
    package static let hubMessagesReceived = "wps_hub_messages_received_total"
    /// Counter; `hub`. Frames delivered to clients.
    package static let hubMessagesSent = "wps_hub_messages_sent_total"
    /// Counter; `hub`. Messages kept for a reliable client's replay and dropped because their
    /// TTL (`messageTtlSeconds`, `ttlSeconds`) passed before the client came back.
    package static let hubMessagesExpired = "wps_hub_messages_expired_total"
}
