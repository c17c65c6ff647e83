import BridgeCore
import BridgeObservability
import Logging
import ServiceLifecycle
import Synchronization
import WebPubSub

/// Whether Web PubSub answers and accepts the access key, for `/readyz`: at start and every
/// `interval`, a signed `HEAD /api/hubs/{hub}/groups/{probe}` (200 and 404 both mean yes; 401
/// and 403 mean the key is refused; no answer means unreachable).
final class WebPubSubProbe: HealthReporting, Service {
    let hub: String
    let client: @Sendable () async throws -> WebPubSubServiceClient
    let interval: Duration
    let logger: Logger
    private let problem = Mutex<String?>("not checked yet")

    init(hub: String, interval: Duration = .seconds(15), logger: Logger, client: @escaping @Sendable () async throws -> WebPubSubServiceClient) {
        self.hub = hub
        self.interval = interval
        self.logger = logger
        self.client = client
    }

    var healthProblem: String? { problem.withLock { $0 } }

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while true {
                await self.check()
                try await Task.sleep(for: self.interval)
            }
        }
    }

    func check() async {
        let result: String?
        var what = "the access key"
        do {
            let client = try await client()
            if case .entra = client.authentication { what = "the Entra ID token (does the identity have a Web PubSub role?)" }
            _ = try await client.groupExists(hub: hub, group: "wps-bridge-readiness")
            result = nil
        } catch let error as WebPubSubError where error.status == 401 || error.status == 403 {
            result = "the service refuses \(what) (HTTP \(error.status ?? 0))"
        } catch is CancellationError {
            return
        } catch {
            result = "\(error)"
        }
        let previous = problem.withLock { p in
            defer { p = result }
            return p
        }
        guard previous != result else { return }
        if let result {
            logger.warning("Web PubSub is not ready", metadata: [LogKey.reason: "\(result)"])
        } else if previous != "not checked yet" {
            logger.notice("Web PubSub is reachable again")
        }
    }
}
