import BridgeCore
import BridgeServer
import GroupListener
import Logging
import WebPubSub

/// A group listener whose messages are first written to the `events:` sinks that name their
/// group, then handed to the routes that read the source (or settled, when none does).
struct MirroringSource: SourceAdapter {
    let inner: GroupListenerSource
    let mirror: GroupMessageMirror
    let routed: Bool

    var name: String { inner.name }

    func run(emit: DeliveryEmitter) async throws {
        try await inner.run(
            emit: DeliveryEmitter { delivery in
                if delivery.rejection == nil {
                    do {
                        try await mirror.write(delivery.message)
                    } catch {
                        delivery.nack("shutting down before the group message was written")
                        throw error
                    }
                }
                if routed { try await emit.emit(delivery) } else { delivery.ack() }
            })
    }

    func finish() async throws { try await inner.finish() }
}

extension BridgeConfiguration {
    /// The sources as the dispatcher runs them: group listeners wrapped so that `events:` rules
    /// see their messages.
    func runnableSources(logger: Logger) -> [any SourceAdapter] {
        let mirror = GroupMessageMirror(rules: eventHandler?.rules ?? [], logger: logger)
        return core.sources.map { entry in
            guard let listener = entry.adapter as? GroupListenerSource else { return entry.adapter }
            let mirrored = listener.settings.groups.contains { group in
                mirror.rules.contains { $0.matches(hub: listener.settings.hub, event: "group:\(group)") }
            }
            guard mirrored else { return listener }
            return MirroringSource(inner: listener, mirror: mirror, routed: core.routes.contains { $0.source == entry.name })
        }
    }

    /// Tells each group listener without a connection of its own where the bridge's Web PubSub is.
    func connectListeners(_ connection: @escaping @Sendable () async throws -> ConnectionString) {
        for entry in core.sources {
            guard let listener = entry.adapter as? GroupListenerSource, listener.usesBridgeConnection else { continue }
            listener.use(connection: connection)
        }
    }
}
