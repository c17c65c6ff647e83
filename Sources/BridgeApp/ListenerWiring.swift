import BridgeCore
import BridgeServer
import GroupListener
import Logging
import WebPubSub

/// A group listener whose messages are first written to the `events:` sinks that name their
/// group, then handed to the dispatcher for the routes that read the source (none: counted as
/// unrouted and settled).
struct MirroringSource: SourceAdapter {
    /// A group listener, or one inside a ``LeaderOnlySource`` (which then decides what is mirrored too).
    let inner: any SourceAdapter
    let mirror: GroupMessageMirror

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
                try await emit.emit(delivery)
            })
    }

    func finish() async throws { try await inner.finish() }
}

extension BridgeConfiguration {
    /// The sources as the dispatcher runs them: group listeners wrapped so that `events:` rules
    /// see their messages.
    func runnableSources(logger: Logger) -> [any SourceAdapter] {
        runnable(core.sources, logger: logger)
    }

    /// `entries` as the dispatcher runs them, mirrored by this configuration's `events:` rules.
    func runnable(_ entries: [SourceEntry], logger: Logger) -> [any SourceAdapter] {
        let mirror = GroupMessageMirror(rules: eventHandler?.rules ?? [], logger: logger)
        return entries.map { entry in
            // Inside the mirror: a follower neither forwards nor mirrors what it hears.
            let gated: any SourceAdapter =
                if entry.leaderOnly, let leadership { LeaderOnlySource(inner: entry.adapter, leadership: leadership) } else { entry.adapter }
            guard let listener = entry.adapter as? any GroupListening else { return gated }
            let mirrored = listener.listenedGroups.contains { group in
                mirror.rules.contains { $0.matches(hub: listener.listenedHub, event: "group:\(group)") }
            }
            guard mirrored else { return gated }
            return MirroringSource(inner: gated, mirror: mirror)
        }
    }

    /// Tells each group listener without a connection of its own where the bridge's Web PubSub is.
    func connectListeners(_ connection: ClientAccessIssuer) {
        for entry in core.sources {
            guard let listener = entry.adapter as? any WebPubSubClientAdapter, listener.usesBridgeConnection else { continue }
            listener.use(connection: connection)
        }
    }
}
