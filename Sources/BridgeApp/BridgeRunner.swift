import BridgeCore
import BridgeJSON
import BridgeObservability
import BridgeServer
import CoreMetrics
import Foundation
package import LocalHub
package import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals
import WebPubSub

/// Runs a configured bridge: with the embedded hub when the config asks for one, against
/// Azure Web PubSub otherwise, or printing sends (`dryRun`).
package enum BridgeRunner {
    /// Returns when the bridge has finished (its sources ended) or after a graceful shutdown.
    /// - Parameters:
    ///   - configPath: the file the configuration came from: SIGHUP (and `POST /-/reload` with
    ///     `server.reload: true`) re-read it.
    ///   - progress: print a one-line summary every few seconds (on a terminal).
    package static func run(
        configuration: BridgeConfiguration, configPath: String? = nil, dryRun: Bool, progress: Bool = false, logger: Logger
    ) async throws {
        let connection = try connect(configuration, dryRun: dryRun, logger: logger)
        var services = connection.services
        if let handler = configuration.eventHandler, configuration.server != nil, handler.accessKeys.isEmpty, handler.authToken != nil {
            logger.notice(
                "the event handler cannot check ce-signature without an access key (webpubsub uses Entra ID): requests are authenticated by eventHandler.authToken alone"
            )
        }
        let prepare: @Sendable (BridgeConfiguration) -> Void = { [listenerConnection = connection.listenerConnection] config in
            if let listenerConnection { config.connectListeners(listenerConnection) }
        }
        prepare(configuration)
        let eventSinks = configuration.eventHandler?.rules.map(\.sink) ?? []
        let bridge = BridgeService(configuration: configuration, transport: connection.transport, logger: logger)
        let reloader = configPath.map {
            Reloader(
                path: $0, requireWebPubSub: !dryRun, configuration: configuration, dispatcher: bridge.dispatcher, logger: logger, prepare: prepare)
        }
        if let reloader {
            services.append(.init(service: ReloadOnSignal(reloader: reloader), successTerminationBehavior: .ignore, serviceName: "reload"))
        }
        let handler = configuration.server == nil ? nil : configuration.eventHandler.map { EventHandler(configuration: $0, logger: logger) }
        if let server = configuration.server {
            services += serverServices(
                server, handler: handler, configuration: configuration, bridge: bridge, reloader: reloader, connection: connection, logger: logger)
        }
        if progress {
            let dispatcher = bridge.dispatcher
            services.append(
                .init(
                    service: ProgressReporter(stats: dispatcher.stats, inFlight: { dispatcher.inFlight }), successTerminationBehavior: .ignore,
                    serviceName: "progress"))
        }
        // Before the bridge: shut down after it, so the lease is released once its sources stopped.
        if let leadership = configuration.leadership {
            services.append(.init(service: LeadershipService(leadership: leadership), serviceName: "leadership"))
        }
        // The bridge returning (stdin at EOF) ends the run, and the hub and the server (health,
        // metrics) stop after it; unless the server is the event handler, which goes on until a signal.
        services.append(
            .init(
                service: bridge, successTerminationBehavior: handler == nil ? .gracefullyShutdownGroup : .ignore,
                serviceName: "bridge"))
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        var failure: (any Error)?
        do { try await group.run() } catch { failure = error }
        try? await connection.client?.shutdown()
        try? await connection.hubTransport?.shutdown()
        for sink in eventSinks { try? await sink.close() }
        if let failure { throw failure }
    }

    /// Where the bridge sends, and where its listeners connect.
    struct WebPubSubConnection {
        let transport: any DeliveryTransport
        /// The embedded hub's transport: probed for readiness and shut down at the end.
        var hubTransport: HubTransport?
        var client: WebPubSubServiceClient?
        /// Where listeners connect: the bridge's Web PubSub (for this config, and reloaded ones).
        var listenerConnection: ClientAccessIssuer?
        var embeddedHub: LocalHub?
        /// The embedded hub and its announcement, when there is one.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
    }

    /// The transport for `configuration`: printing (dry run), the embedded hub, or Azure Web PubSub.
    static func connect(_ configuration: BridgeConfiguration, dryRun: Bool, logger: Logger) throws -> WebPubSubConnection {
        if dryRun {
            var connection = WebPubSubConnection(transport: DryRunTransport())
            // Listeners still listen (to the configured service, when there is one).
            if let cs = configuration.webpubsub.connectionString { connection.listenerConnection = .signing(cs) }
            if configuration.webpubsub.entra != nil {
                let c = try configuration.webpubsub.makeClient(logger: logger)
                connection.client = c
                connection.listenerConnection = .service(c)
            }
            return connection
        }
        if let embedded = configuration.webpubsub.embedded {
            let hub = LocalHub(configuration: embedded, logger: logger)
            let page = demoPage(configuration)
            let transport = HubTransport(hub: hub, settings: configuration.webpubsub.client, logger: logger)
            var connection = WebPubSubConnection(transport: transport, hubTransport: transport, embeddedHub: hub)
            connection.services.append(.init(service: hub, serviceName: "hub"))
            connection.services.append(
                .init(
                    service: WhenListening(hub: hub) { endpoint, _ in
                        logger.notice("embedded hub ready; the demo page shows what is sent: \(endpoint)/\(page)")
                    }, successTerminationBehavior: .ignore, serviceName: "announce"))
            connection.listenerConnection = ClientAccessIssuer { hub, userId, groups, expiresIn in
                try await transport.ready().clientAccess(hub: hub, userId: userId, groups: groups, expiresIn: expiresIn)
            }
            return connection
        }
        let c = try configuration.webpubsub.makeClient(logger: logger)
        var metadata: Logger.Metadata = [LogKey.endpoint: "\(c.endpoint)"]
        if let entra = configuration.webpubsub.entra { metadata[LogKey.credential] = "\(entra.credential)" }
        logger.info("sending to Web PubSub", metadata: metadata)
        return WebPubSubConnection(transport: WebPubSubTransport(client: c), client: c, listenerConnection: .service(c))
    }

    /// The bridge server (event handler, health, metrics, reload), its admin listener when
    /// `adminListen` splits them, and the Web PubSub readiness probe.
    static func serverServices(
        _ server: ServerSettings, handler: EventHandler?, configuration: BridgeConfiguration, bridge: BridgeService, reloader: Reloader?,
        connection: WebPubSubConnection, logger: Logger
    ) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        // Readiness includes Web PubSub itself: reachable, and accepting the key.
        var probe: WebPubSubProbe?
        let probeHub = configuration.webpubsub.defaultHub ?? "healthcheck"
        if let client = connection.client {
            probe = WebPubSubProbe(hub: probeHub, logger: logger) { client }
        } else if let hubTransport = connection.hubTransport {
            probe = WebPubSubProbe(hub: probeHub, logger: logger) { try await hubTransport.ready() }
        }
        if let probe { services.append(.init(service: probe, successTerminationBehavior: .ignore, serviceName: "probe")) }
        // What is watched follows reloads (sources come and go).
        let conditions = bridge.dispatcher.conditions
        let watched: @Sendable () -> [(String, any HealthReporting)] = { [probe] in
            (probe.map { [("webpubsub", $0)] } ?? []) + [("routes", conditions)] + (reloader?.current ?? configuration).healthReporters
        }
        let hub = connection.embeddedHub
        let reported = Mutex<Set<String>>([])
        var reloadEndpoint: BridgeServer.ReloadEndpoint?
        if let token = server.reloadToken, let reloader {
            reloadEndpoint = BridgeServer.ReloadEndpoint(token: token) {
                let outcome = await reloader.reload()
                return (outcome.status, outcome.report)
            }
        }
        let readiness: @Sendable () -> [String] = { watched().compactMap { name, adapter in adapter.healthProblem.map { "\(name): \($0)" } } }
        // Whether this replica leads the `replicas: many` sources (`coordination`).
        let readyDetails: @Sendable () -> [(String, JSONValue)] = { [leadership = configuration.leadership] in
            leadership.map { [("leader", .bool($0.isLeader)), ("coordination", .string($0.description))] } ?? []
        }
        let metrics: @Sendable () -> [UInt8] = {
            // Gauges read at scrape time; the counters are kept up as things happen.
            let components = watched()
            for (name, adapter) in components {
                Gauge(label: MetricName.componentReady, dimensions: [("component", name)]).record(adapter.healthProblem == nil ? 1 : 0)
            }
            // Components a reload removed go away rather than keep their last value.
            let gone = reported.withLock { names in
                let now = Set(components.map(\.0))
                defer { names = now }
                return names.subtracting(now)
            }
            for name in gone { Gauge(label: MetricName.componentReady, dimensions: [("component", name)]).destroy() }
            hub?.recordMetrics()
            return BridgeMetrics.registry.emitToBuffer()
        }
        // With adminListen the port the service reaches serves the event handler alone.
        let bridgeServer = BridgeServer(
            host: server.host, port: server.port, handler: handler, readiness: readiness, metrics: metrics, reload: reloadEndpoint,
            limits: server.limits, endpoints: server.admin == nil ? .all : .events, readyDetails: readyDetails, logger: logger)
        services.append(.init(service: bridgeServer, serviceName: "server"))
        if let admin = server.admin {
            let adminServer = BridgeServer(
                host: admin.host, port: admin.port, handler: nil, readiness: readiness, metrics: metrics, reload: reloadEndpoint,
                limits: server.limits, endpoints: .operations, readyDetails: readyDetails, logger: logger)
            services.append(.init(service: adminServer, serviceName: "admin"))
        }
        return services
    }

    /// `?hub=H&group=G` of the first route's first group target, for the log line.
    static func demoPage(_ configuration: BridgeConfiguration) -> String {
        var query = ""
        if let target = configuration.core.routes.first?.targets.first, target.hub.isConstant {
            query = "?hub=\(percentEncode(target.hub.text))"
            if case .group(let g) = target.recipient, g.isConstant { query += "&group=\(percentEncode(g.text))" }
        }
        return query
    }
}

struct ValidationFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Sends to the embedded hub through the same REST client as to Azure, once the hub listens.
final class HubTransport: DeliveryTransport {
    let hub: LocalHub
    let settings: WebPubSubServiceClient.Configuration
    let logger: Logger
    private let client = Mutex<WebPubSubServiceClient?>(nil)

    init(hub: LocalHub, settings: WebPubSubServiceClient.Configuration, logger: Logger) {
        self.hub = hub
        self.settings = settings
        self.logger = logger
    }

    func ready() async throws -> WebPubSubServiceClient {
        if let c = client.withLock({ $0 }) { return c }
        let cs = try ConnectionString(parsing: try await hub.connectionString())
        return client.withLock { existing in
            if let existing { return existing }
            let c = WebPubSubServiceClient(connectionString: cs, configuration: settings, logger: logger)
            existing = c
            return c
        }
    }

    func send(_ payload: ByteBuffer, dataType: DataType, to target: ResolvedTarget) async throws {
        try await WebPubSubTransport(client: try await ready()).send(payload, dataType: dataType, to: target)
    }

    func shutdown() async throws {
        try await client.withLock { $0 }?.shutdown()
    }
}

/// Runs `action` with the hub's endpoint and connection string once it listens.
package struct WhenListening: Service {
    let hub: LocalHub
    let action: @Sendable (_ endpoint: String, _ connectionString: String) async -> Void

    package init(hub: LocalHub, action: @escaping @Sendable (_ endpoint: String, _ connectionString: String) async -> Void) {
        self.hub = hub
        self.action = action
    }

    package func run() async throws {
        await action(try await hub.endpoint(), try await hub.connectionString())
    }
}

/// Campaigns for the coordination lease until a graceful shutdown, then releases it.
struct LeadershipService: Service {
    let leadership: any Leadership

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await leadership.run() }
    }
}
