import ArgumentParser  // a conformance of swift-log's Logger.Level is public whatever we write
import AzureIdentity
import BridgeApp
import BridgeConfig
import BridgeCore
import BridgeCrypto
import BridgeObservability
import CMalloc
import Foundation
import KafkaAdapter
import LocalHub
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import UnixSignals
import WebPubSub
import WebPubSubProtocol

struct Hub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the embedded Web PubSub-compatible hub on its own.",
        discussion: "Prints its connection string as the first line on stdout, then serves until SIGTERM or SIGINT.")

    @Option(help: "The address to listen on.") var host: String?
    @Option(help: "The port (0 picks a free one).") var port: Int?
    @Option(
        help:
            "The access key (default: $WPS_HUB_KEY, a random one, or webpubsub.embedded.accessKey of --config). Visible in ps: prefer --access-key-file."
    )
    var accessKey: String?
    @Option(help: "A file holding the access key.") var accessKeyFile: String?
    @Option(name: .customLong("event-handler"), help: "HUB=URL_TEMPLATE: send this hub's events to an upstream (repeatable).")
    var eventHandlers: [String] = []
    @Option(help: "Accept at most N REST requests per second; answer the rest with 429 and Retry-After.") var rateLimit: Int?
    @Flag(help: "Accept client connections without an access token.") var allowAnonymous = false
    @Flag(help: "Serve GET /negotiate and the demo page: a client token for anyone who asks (loopback development only).") var negotiate = false
    @Option(
        name: .customLong("trust-issuer"),
        help:
            "Accept Entra ID tokens (RS256, audience https://webpubsub.azure.com) from this issuer; keys from its OpenID configuration (repeatable).")
    var trustIssuers: [String] = []
    @Option(name: .shortAndLong, help: "A bridge config whose webpubsub.embedded section sets up the hub.") var config: String?
    @OptionGroup var log: LogOptions

    func run() async throws {
        tuneMalloc()
        raiseOpenFileLimit()
        try checkLibcrypto()
        let logger = log.bootstrap()
        var settings = LocalHubConfiguration(accessKeys: [LocalHubConfiguration.randomAccessKey()])
        if let config {
            let reader = ConfigReader(
                environment: ProcessInfo.processInfo.environment, baseDirectory: URL(fileURLWithPath: config).deletingLastPathComponent().path)
            let text: String
            do { text = try String(contentsOfFile: config, encoding: .utf8) } catch {
                throw ValidationError("cannot read \(config): \(error.localizedDescription)")
            }
            if let embedded = reader.root(yaml: text)?.mapping("webpubsub")?.mapping("embedded", required: true),
                case let read = LocalHubConfiguration(reading: embedded), reader.issues.isEmpty
            {
                settings = read
            } else {
                print(ConfigError(file: config, issues: reader.issues).description)
                throw ExitCode(1)
            }
        }
        if let host { settings.host = host }
        if let port { settings.port = port }
        guard accessKey == nil || accessKeyFile == nil else { throw ValidationError("give --access-key-file or --access-key, not both") }
        if let key = ProcessInfo.processInfo.environment["WPS_HUB_KEY"], !key.isEmpty, config == nil { settings.accessKeys = [AccessKey(key)] }
        if let accessKey {
            warnSecretOnCommandLine("--access-key", instead: "--access-key-file or WPS_HUB_KEY", logger: logger)
            settings.accessKeys = [AccessKey(accessKey)]
        }
        if let accessKeyFile { settings.accessKeys = [AccessKey(try readSecretFile(accessKeyFile, option: "--access-key-file"))] }
        if let rateLimit { settings.rateLimit = rateLimit }
        if allowAnonymous { settings.allowAnonymous = true }
        if negotiate { settings.negotiate = true }
        settings.trustedIssuers += trustIssuers
        for spec in eventHandlers {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else {
                throw ValidationError("--event-handler takes HUB=URL_TEMPLATE, e.g. chat=http://localhost:3000/eventhandler/{event}")
            }
            settings.eventHandlers[parts[0], default: []].append(EventHandlerSettings(urlTemplate: parts[1]))
        }
        // The same checks as for a config file, told by the flag that set each setting.
        if let problem = settings.problems().first {
            throw ValidationError("\(Self.flag(for: problem.setting)): \(problem.message)")
        }
        var byHub: [String: [EventHandlerSettings]] = [:]
        for name in settings.eventHandlers.keys.sorted() { byHub[name.lowercased(), default: []] += settings.eventHandlers[name] ?? [] }
        settings.eventHandlers = byHub
        let hub = LocalHub(configuration: settings, logger: logger)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: hub, serviceName: "hub"),
                    .init(
                        service: WhenListening(hub: hub) { endpoint, connectionString in
                            // Unbuffered: whoever started the hub reads this line while it runs.
                            FileHandle.standardOutput.write(Data((connectionString + "\n").utf8))
                            logger.notice("hub ready; demo page: \(endpoint)/?hub=chat&group=demo")
                        }, successTerminationBehavior: .ignore, serviceName: "announce"),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// The flag (or config key) that sets `setting`.
    static func flag(for setting: LocalHubConfiguration.Setting) -> String {
        switch setting {
        case .accessKey: "--access-key-file"
        case .port: "--port"
        case .rateLimit: "--rate-limit"
        case .trustedIssuers: "--trust-issuer"
        case .hubs: "--event-handler"
        default: "webpubsub.embedded.\(setting.rawValue)"
        }
    }
}
