public import ArgumentParser  // a conformance of swift-log's Logger.Level is public whatever we write
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

@main
struct WPSBridge: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "wps-bridge",
        abstract: "Bridges Kafka, Redis and stdin to Azure Web PubSub, and client events back.",
        version: "\(version) (librdkafka \(librdkafkaVersion), \(openSSLVersion))",
        subcommands: [Run.self, Hub.self, Validate.self, Token.self, Send.self],
        defaultSubcommand: Run.self
    )
}

/// glibc's malloc, set up for a long-running process with many threads. Measured on the
/// benchmark's Kafka drain (200,000 messages): of 24-30 MB of anonymous memory, 6 MB was in use
/// and the rest free blocks glibc kept. Now 18.6 MB, at the same throughput:
/// - two arenas instead of up to eight per core: a thread that finds the arenas locked gets one
///   of its own, and freed memory stays in the arena it came from (librdkafka's, NIO's and the
///   concurrency pool's threads made several partly used ones);
/// - fixed mmap (128 KiB) and trim (512 KiB) thresholds: glibc's dynamic ones rise to the
///   largest block ever freed (librdkafka's fetch buffers), after which that much free memory
///   stays in the heap.
/// The `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` environment
/// variables still decide where they are set.
func tuneMalloc() {
    let environment = ProcessInfo.processInfo.environment
    if environment["MALLOC_ARENA_MAX"] == nil { _ = wps_malloc_arena_max(2) }
    if environment["MALLOC_MMAP_THRESHOLD_"] == nil { _ = wps_malloc_mmap_threshold(128 * 1024) }
    if environment["MALLOC_TRIM_THRESHOLD_"] == nil { _ = wps_malloc_trim_threshold(512 * 1024) }
}

/// A server holds a file descriptor per connection: the soft limit (1,024 in a new Debian shell)
/// is raised to the hard one, as most servers do; `maxConnections` is the cap that matters.
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

/// Fails with OpenSSL's own reason when the system's libcrypto cannot compute HMAC-SHA256 (a
/// broken install, or a provider configuration without SHA-256): at start, not at the first send.
func checkLibcrypto() throws {
    do {
        try HMACSHA256.selfTest()
    } catch {
        throw ValidationError("the system's libcrypto (\(openSSLVersion)) cannot be used: \(error)")
    }
}

/// A secret given on the command line is visible to every user of the machine (`ps`, /proc) and
/// stays in shell history: it still works, with a warning.
func warnSecretOnCommandLine(_ option: String, instead: String, logger: Logger) {
    logger.warning("\(option) puts a secret on the command line, where ps and shell history show it; use \(instead)")
}

/// The first line of a secret file, without surrounding white space.
func readSecretFile(_ path: String, option: String) throws -> String {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw ValidationError("\(option): cannot read \(path): \(error.localizedDescription)")
    }
    let secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
    guard !secret.isEmpty else { throw ValidationError("\(option): \(path) is empty") }
    return secret
}

/// Options that say how to log.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Option(name: .long, help: "text or json (one object per line); default: text on a terminal, json otherwise.")
    var logFormat: BridgeLogHandler.Format?

    func bootstrap() -> Logger {
        let level = logLevel
        let format = logFormat ?? (isatty(STDERR_FILENO) == 1 ? .text : .json)
        LoggingSystem.bootstrap { label in BridgeLogHandler(label: label, format: format, level: level) }
        return Logger(label: "wps-bridge")
    }
}

extension BridgeLogHandler.Format: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}

/// `--connection-string` or `WEBPUBSUB_CONNECTION_STRING`; or `--endpoint` with an Entra ID `--credential`.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .long, help: "Web PubSub connection string (default: $WEBPUBSUB_CONNECTION_STRING). Visible in ps: prefer --connection-string-file.")
    var connectionString: String?

    @Option(name: .long, help: "A file holding the Web PubSub connection string.")
    var connectionStringFile: String?

    @Option(help: "The service endpoint, with --credential (e.g. https://x.webpubsub.azure.com).")
    var endpoint: String?

    @Option(help: "Entra ID credential: managedIdentity, workloadIdentity, clientSecret or default (with --endpoint).")
    var credential: String?

    @Option(help: "Client id of the app registration or user-assigned identity (default: $AZURE_CLIENT_ID).")
    var clientId: String?

    @Option(help: "Tenant id, for clientSecret and workloadIdentity (default: $AZURE_TENANT_ID).")
    var tenantId: String?

    @Option(help: "A file holding the client secret, for clientSecret (default: $AZURE_CLIENT_SECRET).")
    var clientSecretFile: String?

    /// The REST client these options describe.
    func makeClient(logger: Logger) throws -> WebPubSubServiceClient {
        // An empty variable is an unset one.
        let environment = ProcessInfo.processInfo.environment.filter { !$0.value.isEmpty }
        if let credential {
            guard connectionString == nil else { throw ValidationError("--credential goes with --endpoint, not --connection-string") }
            guard let endpoint else { throw ValidationError("--credential needs --endpoint") }
            // The same rules as `webpubsub.credential` in a file; the flags default to their variables.
            var values: [String: String] = [:]
            switch credential {
            case "managedIdentity": values["clientId"] = clientId
            case "workloadIdentity": (values["tenantId"], values["clientId"]) = (tenantId, clientId)
            case "clientSecret":
                values["tenantId"] = tenantId ?? environment["AZURE_TENANT_ID"]
                values["clientId"] = clientId ?? environment["AZURE_CLIENT_ID"]
                values["clientSecret"] = environment["AZURE_CLIENT_SECRET"]
                if let clientSecretFile { values["clientSecret"] = try readSecretFile(clientSecretFile, option: "--client-secret-file") }
            case "default": values["managedIdentityClientId"] = clientId
            default: break
            }
            let settings: CredentialSettings
            do {
                settings = try CredentialSettings.make(type: credential, values: values)
            } catch {
                let flags = ["tenantId": "--tenant-id", "clientId": "--client-id", "clientSecret": "--client-secret-file"]
                throw ValidationError(
                    error.all.map { "\($0.key.flatMap { flags[$0] } ?? "--credential"): \($0.message)" }.joined(separator: "; ")
                        + " (--tenant-id, --client-id and --client-secret-file default to AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET)")
            }
            do {
                return try WebPubSubServiceClient(
                    endpoint: endpoint, authentication: .entra(try settings.make(environment: environment, logger: logger)), logger: logger)
            } catch let error as WebPubSubError {
                throw ValidationError("--endpoint: \(error.message)")
            } catch {
                throw ValidationError("\(error)")
            }
        }
        guard endpoint == nil else { throw ValidationError("--endpoint needs --credential (or give --connection-string-file)") }
        guard connectionString == nil || connectionStringFile == nil else {
            throw ValidationError("give --connection-string-file or --connection-string, not both")
        }
        var given = connectionString
        if given != nil {
            warnSecretOnCommandLine("--connection-string", instead: "--connection-string-file or WEBPUBSUB_CONNECTION_STRING", logger: logger)
        }
        if let connectionStringFile { given = try readSecretFile(connectionStringFile, option: "--connection-string-file") }
        guard let text = given ?? environment["WEBPUBSUB_CONNECTION_STRING"], !text.isEmpty else {
            throw ValidationError(
                "no connection: pass --connection-string-file (or set WEBPUBSUB_CONNECTION_STRING), or --endpoint with --credential")
        }
        do {
            return WebPubSubServiceClient(connectionString: try ConnectionString(parsing: text), logger: logger)
        } catch {
            throw ValidationError("invalid connection string: \(error.message)")
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the bridge (the default command).")

    @Option(name: .shortAndLong, help: "The config file.")
    var config: String = "bridge.yaml"

    @Flag(help: "Print each send instead of making it.")
    var dryRun = false

    @Flag(help: "No progress line (printed every 5 s while messages move, when stderr is a terminal).")
    var quiet = false

    @OptionGroup var log: LogOptions

    func run() async throws {
        tuneMalloc()
        raiseOpenFileLimit()
        try checkLibcrypto()
        // A write to a socket the peer (or a cancelled Redis read) closed must fail, not kill us.
        signal(SIGPIPE, SIG_IGN)
        let logger = log.bootstrap()
        BridgeMetrics.bootstrap()
        let configuration: BridgeConfiguration
        do {
            configuration = try BridgeConfiguration.load(path: config, requireWebPubSub: !dryRun, logger: logger)
        } catch {
            FileHandle.standardError.write(Data((error.description + "\n").utf8))
            throw ExitCode(1)
        }
        for warning in configuration.warnings { logger.warning("\(warning)") }
        let secondSignal = SecondSignal(logger: logger)
        defer { secondSignal.cancel() }
        do {
            try await BridgeRunner.run(
                configuration: configuration, configPath: config, dryRun: dryRun, progress: !quiet && isatty(STDERR_FILENO) == 1, logger: logger)
        } catch {
            logger.error("bridge failed", metadata: [LogKey.error: "\(error)"])
            throw ExitCode(1)
        }
    }
}

struct Validate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check a config file; print every problem with its line.")

    @Option(name: .shortAndLong, help: "The config file.")
    var config: String = "bridge.yaml"

    func run() async throws {
        let logger = Logger(label: "wps-bridge.validate") { _ in SwiftLogNoOpLogHandler() }
        do {
            let configuration = try BridgeConfiguration.load(path: config, logger: logger)
            print("\(config): valid")
            print(configuration.summary)
            for warning in configuration.warnings { print("warning: \(warning)") }
        } catch {
            print(error.description)
            throw ExitCode(1)
        }
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a client access URL for a hub.")

    @Option(help: "The hub.") var hub: String
    @Option(help: "The user id (the token's subject).") var user: String?
    @Option(name: .customLong("role"), help: "A role, e.g. webpubsub.joinLeaveGroup (repeatable).") var roles: [String] = []
    @Option(name: .customLong("group"), help: "A group to join on connect (repeatable).") var groups: [String] = []
    @Option(help: "Minutes until the token expires.") var expires: Int = 60
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions

    func run() async throws {
        guard expires > 0 else { throw ValidationError("--expires must be at least 1 minute") }
        let logger = log.bootstrap()
        let client = try connection.makeClient(logger: logger)
        do {
            let access = try await client.clientAccess(hub: hub, userId: user, roles: roles, groups: groups, expiresIn: .seconds(expires * 60))
            try? await client.shutdown()
            print(access.url)
        } catch {
            try? await client.shutdown()
            FileHandle.standardError.write(Data("token failed: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send one message through the REST API.")

    @Option(help: "The hub.") var hub: String
    @Flag(help: "Send to every connection of the hub.") var all = false
    @Option(help: "Send to a group.") var group: String?
    @Option(help: "Send to a user.") var user: String?
    @Option(help: "Send to a connection.") var connection: String?
    @Option(help: "OData filter, e.g. \"userId ne 'bot'\".") var filter: String?
    @Option(name: .customLong("excluded"), help: "A connection to leave out (repeatable).") var excluded: [String] = []
    @Option(help: "json, text or binary (binary: MESSAGE is base64).") var dataType: String = "text"
    @Argument(help: "The message.") var message: String
    @OptionGroup var connectionOptions: ConnectionOptions
    @OptionGroup var log: LogOptions

    func validate() throws {
        let chosen = [all, group != nil, user != nil, connection != nil].filter { $0 }.count
        guard chosen == 1 else { throw ValidationError("give exactly one of --all, --group, --user, --connection") }
        guard DataType(rawValue: dataType) != nil else { throw ValidationError("--data-type must be json, text or binary") }
    }

    func run() async throws {
        let logger = log.bootstrap()
        let type = DataType(rawValue: dataType)!
        var payload = ByteBuffer(string: message)
        if type == .binary {
            guard let bytes = Data(base64Encoded: message) else { throw ValidationError("binary MESSAGE must be base64") }
            payload = ByteBuffer(bytes: bytes)
        }
        if type == .json, (try? JSONSerialization.jsonObject(with: Data(message.utf8), options: .fragmentsAllowed)) == nil {
            throw ValidationError("MESSAGE is not valid JSON (use --data-type text for plain text)")
        }
        let client = try connectionOptions.makeClient(logger: logger)
        let recipient: Recipient =
            if all { .all } else if let group { .group(group) } else if let user { .user(user) } else { .connection(connection!) }
        let target = ResolvedTarget(hub: hub, recipient: recipient, filter: filter, excluded: excluded)
        do {
            try await WebPubSubTransport(client: client).send(payload, dataType: type, to: target)
            try? await client.shutdown()
            print("sent to \(target)")
        } catch {
            try? await client.shutdown()
            FileHandle.standardError.write(Data("send failed: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

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

/// SIGTERM or SIGINT starts a graceful shutdown (the service group's business); a second one
/// while it runs exits at once, for an operator who does not want to wait for the drain.
final class SecondSignal {
    private final class Count: Sendable {
        let value = Atomic<Int>(0)
    }

    private let sources: [any DispatchSourceSignal]

    init(logger: Logger) {
        let count = Count()
        sources = [SIGTERM, SIGINT].map { number in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                // Signals that arrive together are merged into one event: `data` counts them.
                if count.value.add(max(1, Int(source.data)), ordering: .relaxed).newValue >= 2 {
                    logger.warning(
                        "second signal: exiting without waiting for in-flight sends (they are read again on restart where the source allows)")
                    exit(130)
                }
            }
            source.resume()
            return source
        }
    }

    func cancel() {
        for source in sources { source.cancel() }
    }
}
