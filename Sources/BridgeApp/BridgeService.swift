package import BridgeCore
import BridgeObservability
package import Logging
import ServiceLifecycle

/// The forwarding half of the bridge as a `Service`: sources -> routes -> dispatcher -> transport.
/// Returns when every source has ended (stdin at EOF) and every send is settled, or after a
/// graceful shutdown drained what it could.
package struct BridgeService: Service {
    package let configuration: BridgeConfiguration
    package let dispatcher: Dispatcher
    let logger: Logger

    package init(configuration: BridgeConfiguration, transport: any DeliveryTransport, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        dispatcher = Dispatcher(
            routes: configuration.core.routes, transport: transport, deadLetter: configuration.core.deadLetter,
            settings: configuration.core.delivery, workerExecutors: transport.workerExecutors, logger: logger)
    }

    package func run() async throws {
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
