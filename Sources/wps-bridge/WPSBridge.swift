import ArgumentParser
import BridgeApp
import BridgeCore
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import WebPubSub

@main
struct WPSBridge: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "wps-bridge",
        abstract: "Bridges Kafka, Redis and stdin to Azure Web PubSub, and client events back.",
        version: version,
        subcommands: [Run.self, Validate.self, Token.self, Send.self],
        defaultSubcommand: Run.self
    )
}

/// Options that say how to log.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    func bootstrap() -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: "wps-bridge")
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// `--connection-string` or `WEBPUBSUB_CONNECTION_STRING`.
struct ConnectionOptions: ParsableArguments {
    @Option(name: .long, help: "Web PubSub connection string (default: $WEBPUBSUB_CONNECTION_STRING).")
    var connectionString: String?

    func resolve() throws -> ConnectionString {
        guard let text = connectionString ?? ProcessInfo.processInfo.environment["WEBPUBSUB_CONNECTION_STRING"], !text.isEmpty else {
            throw ValidationError("no connection string: pass --connection-string or set WEBPUBSUB_CONNECTION_STRING")
        }
        do {
            return try ConnectionString(parsing: text)
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

    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = log.bootstrap()
        let configuration: BridgeConfiguration
        do {
            configuration = try BridgeConfiguration.load(path: config, requireWebPubSub: !dryRun, logger: logger)
        } catch {
            FileHandle.standardError.write(Data((error.description + "\n").utf8))
            throw ExitCode(1)
        }
        for warning in configuration.warnings { logger.warning("\(warning)") }
        let transport: any DeliveryTransport
        var client: WebPubSubServiceClient?
        if dryRun {
            transport = DryRunTransport()
        } else {
            guard let cs = configuration.webpubsub.connectionString else { throw ValidationError("webpubsub has no connection") }
            let c = WebPubSubServiceClient(
                connectionString: cs, configuration: configuration.webpubsub.client, logger: Logger(label: "wps-bridge.webpubsub"))
            client = c
            transport = WebPubSubTransport(client: c)
            logger.info("sending to Web PubSub", metadata: ["wps.endpoint": "\(cs.endpoint)"])
        }
        let bridge = BridgeService(configuration: configuration, transport: transport, logger: logger)
        // The bridge returning (stdin at EOF) ends the run cleanly.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: bridge, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "bridge")],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        var failure: (any Error)?
        do {
            try await group.run()
        } catch {
            failure = error
        }
        try? await client?.shutdown()
        if let failure {
            logger.error("bridge failed", metadata: ["error": "\(failure)"])
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

    func run() async throws {
        guard expires > 0 else { throw ValidationError("--expires must be at least 1 minute") }
        let cs = try connection.resolve()
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: hub, key: cs.accessKey, userId: user, roles: roles, groups: groups,
            expiresIn: .seconds(expires * 60))
        print(access.url)
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
        let cs = try connectionOptions.resolve()
        let type = DataType(rawValue: dataType)!
        var payload = ByteBuffer(string: message)
        if type == .binary {
            guard let bytes = Data(base64Encoded: message) else { throw ValidationError("binary MESSAGE must be base64") }
            payload = ByteBuffer(bytes: bytes)
        }
        if type == .json, (try? JSONSerialization.jsonObject(with: Data(message.utf8), options: .fragmentsAllowed)) == nil {
            throw ValidationError("MESSAGE is not valid JSON (use --data-type text for plain text)")
        }
        let client = WebPubSubServiceClient(connectionString: cs, logger: logger)
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
