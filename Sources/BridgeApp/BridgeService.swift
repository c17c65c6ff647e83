public import BridgeCore
import BridgeObservability
public import Logging
public import ServiceLifecycle

/// The forwarding half of the bridge as a `Service`: sources -> routes -> dispatcher -> transport.
/// Returns when every source has ended (stdin at EOF) and every send is settled, or after a
/// graceful shutdown drained what it could.
public struct BridgeService: Service {
    public let configuration: BridgeConfiguration
    public let dispatcher: Dispatcher
    let logger: Logger

    public init(configuration: BridgeConfiguration, transport: any DeliveryTransport, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        dispatcher = Dispatcher(
            routes: configuration.core.routes, transport: transport, deadLetter: configuration.core.deadLetter,
            settings: configuration.core.delivery, logger: logger)
    }

    public func run() async throws {
        let sources = configuration.core.sources
        logger.info(
            "bridge started",
            metadata: [
                LogKey.sources: "\(sources.map { "\($0.name) (\($0.type))" }.joined(separator: ", "))",
                LogKey.routes: "\(configuration.core.routes.count)",
            ])
        defer { logger.info("bridge stopped", metadata: [LogKey.stats: "\(dispatcher.stats.summary)"]) }
        try await dispatcher.run(sources: configuration.runnableSources(logger: logger))
    }
}
