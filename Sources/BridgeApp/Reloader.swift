import BridgeConfig
import BridgeCore
import BridgeObservability
import BridgeServer
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// Re-reads the config file (SIGHUP, or `POST /-/reload` with `server.reload: true`). A valid
/// file swaps routes and dead-letter sinks and starts and stops the sources that were added,
/// removed or changed; sources whose settings did not change go on untouched. An invalid one is
/// refused with its validation report and the running config stays. `webpubsub`, `server`,
/// `eventHandler`, `events` and `delivery` are read at start only: a change there is reported
/// and waits for a restart.
package final class Reloader: Sendable {
    package struct Outcome: Sendable {
        package enum Kind: Sendable {
            case applied
            /// The file has mistakes; the running config stays.
            case refused
            /// Another reload is under way.
            case busy
            /// The bridge has finished or is stopping.
            case notRunning
        }

        package let kind: Kind
        package let report: String
        package var applied: Bool { kind == .applied }

        /// The HTTP status `POST /-/reload` answers with.
        package var status: Int {
            switch kind {
            case .applied: 200
            case .refused: 400
            case .busy: 409
            case .notRunning: 503
            }
        }
    }

    let path: String
    /// false for `--dry-run`, which needs no Web PubSub connection.
    let requireWebPubSub: Bool
    let dispatcher: Dispatcher
    let logger: Logger
    /// Readies the sources of a new config (listeners get the bridge's connection).
    let prepare: @Sendable (BridgeConfiguration) -> Void
    private let state: Mutex<(current: BridgeConfiguration, busy: Bool)>

    init(
        path: String, requireWebPubSub: Bool, configuration: BridgeConfiguration, dispatcher: Dispatcher, logger: Logger,
        prepare: @escaping @Sendable (BridgeConfiguration) -> Void
    ) {
        self.path = path
        self.requireWebPubSub = requireWebPubSub
        self.dispatcher = dispatcher
        self.logger = logger
        self.prepare = prepare
        state = Mutex((configuration, false))
    }

    /// The config in force: the running sources (their adapters), the routes, and the sections
    /// read at start.
    package var current: BridgeConfiguration { state.withLock { $0.current } }

    package func reload() async -> Outcome {
        let started = state.withLock { s -> Bool in
            if s.busy { return false }
            s.busy = true
            return true
        }
        guard started else { return Outcome(kind: .busy, report: "a reload is already under way") }
        defer { state.withLock { $0.busy = false } }

        let new: BridgeConfiguration
        do {
            new = try BridgeConfiguration.load(path: path, requireWebPubSub: requireWebPubSub, logger: logger)
        } catch {
            logger.error("config reload refused; the running config stays\n\(error.description)")
            return Outcome(kind: .refused, report: "refused, the running config stays:\n\(error.description)")
        }
        let old = current
        // Sinks made for sections that are not reloaded are never used.
        for rule in new.eventHandler?.rules ?? [] { try? await rule.sink.close() }
        func discard() async {
            for sink in new.core.routes.compactMap(\.deadLetter) + (new.core.deadLetter.map { [$0] } ?? []) { try? await sink.close() }
        }
        var notes: [String] = []
        for section in BridgeConfiguration.restartSections where old.fingerprints[section] != new.fingerprints[section] {
            notes.append("\(section) changed: restart to apply it")
        }
        let oldSources = Dictionary(old.core.sources.map { ($0.name, $0) }) { a, _ in a }
        let newSources = Dictionary(new.core.sources.map { ($0.name, $0) }) { a, _ in a }
        let removed = old.core.sources.filter { newSources[$0.name]?.fingerprint != $0.fingerprint }.map(\.name)
        let added = new.core.sources.filter { oldSources[$0.name]?.fingerprint != $0.fingerprint }
        if old.leadership == nil, let led = added.first(where: \.leaderOnly) {
            await discard()
            let reason = "source '\(led.name)' has 'replicas: many', and this bridge started without 'coordination': restart to apply"
            logger.error("config reload refused; the running config stays", metadata: [LogKey.reason: "\(reason)"])
            return Outcome(kind: .refused, report: "refused, the running config stays: \(reason)")
        }
        prepare(new)
        let result = await dispatcher.reload(
            removing: removed, routes: new.core.routes, deadLetter: new.core.deadLetter, adding: old.runnable(added, logger: logger))
        switch result {
        case .applied:
            break
        case .notRunning:
            await discard()
            logger.warning("config reload not applied: the bridge is starting, stopping or has finished")
            return Outcome(kind: .notRunning, report: "not applied: the bridge is starting, stopping or has finished")
        case .interrupted:
            // The new routes and sinks are in use (the dispatcher closes them at its end).
            logger.warning("config reload cut short: the bridge is stopping")
            return Outcome(kind: .notRunning, report: "cut short: the bridge is stopping")
        }

        // The running adapters of unchanged sources stay; the sections read at start stay.
        var merged = old
        merged.core.sources = new.core.sources.map { entry in
            if let running = oldSources[entry.name], running.fingerprint == entry.fingerprint { return running }
            return entry
        }
        merged.core.routes = new.core.routes
        merged.core.deadLetter = new.core.deadLetter
        state.withLock { $0.current = merged }
        var summary = "reloaded \(path): \(new.core.routes.count) routes"
        if !removed.isEmpty { summary += "; stopped \(removed.sorted().joined(separator: ", "))" }
        if !added.isEmpty { summary += "; started \(added.map(\.name).sorted().joined(separator: ", "))" }
        for warning in new.warnings { notes.append("warning: \(warning)") }
        logger.notice("\(summary)", metadata: notes.isEmpty ? [:] : [LogKey.notes: "\(notes.joined(separator: "; "))"])
        return Outcome(kind: .applied, report: ([summary] + notes).joined(separator: "\n"))
    }
}

/// Reloads on every SIGHUP until the group shuts down.
struct ReloadOnSignal: Service {
    let reloader: Reloader

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals { _ = await reloader.reload() }
        }
    }
}
