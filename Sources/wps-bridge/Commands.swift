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
    @Option(help: "The kind of client: default (Web PubSub), mqtt or socketio; their tokens name their own endpoint.")
    var clientProtocol: String = "default"
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var log: LogOptions

    func run() async throws {
        guard expires > 0 else { throw ValidationError("--expires must be at least 1 minute") }
        guard let clientType = ClientType(parsing: clientProtocol) else {
            throw ValidationError("--client-protocol: '\(clientProtocol)' is not one of \(ClientType.choices) (case does not matter)")
        }
        let logger = log.bootstrap()
        let client = try connection.makeClient(logger: logger)
        do {
            let access = try await client.clientAccess(
                hub: hub, userId: user, roles: roles, groups: groups, expiresIn: .seconds(expires * 60), clientType: clientType)
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
