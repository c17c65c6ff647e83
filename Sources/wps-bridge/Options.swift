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
