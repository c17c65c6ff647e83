import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSub

/// `webpubsub.credential` end to end: the bridge binary gets Entra ID tokens from a test
/// identity provider on loopback (client credentials, federated assertion, IMDS, App Service)
/// and delivers through a `wps-bridge hub --trust-issuer` that checks them.
@Suite(.serialized) struct EntraIDTests {
    let clientId = "aaaaaaaa-0000-0000-0000-000000000001"

    /// The identity variables a machine may have set, blanked (the bridge treats empty as unset)
    /// so that each test sees only its own.
    static let blank = Dictionary(
        uniqueKeysWithValues: [
            "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_AUTHORITY_HOST", "AZURE_POD_IDENTITY_AUTHORITY_HOST", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT",
            "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
        ].map { ($0, "") })

    func isolated(_ environment: [String: String]) -> [String: String] { Self.blank.merging(environment) { $1 } }
    let secret = "s3cr3t-value-that-must-not-be-logged"

    /// A stdin -> group demo config with this `credential:` block (YAML, indented under webpubsub).
    func config(_ dir: String, hub: HubProcess, credential: String) throws -> String {
        let path = dir + "/bridge.yaml"
        try """
        webpubsub:
          endpoint: http://127.0.0.1:\(hub.port)
          hub: chat
        \(credential)
        sources:
          - {name: in, type: stdin}
        routes:
          - {from: in, to: [{group: demo}]}
        deadLetter: {type: file, path: \(dir)/dead.ndjson}
        delivery:
          retry: {maxAttempts: 3, initialBackoff: 10ms, maxBackoff: 100ms}
          shutdownTimeout: 2s
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs the bridge with three messages and checks that the subscriber got each, that nothing
    /// was dead-lettered, and that neither the secret nor any token reached the log.
    func deliver(
        _ idp: TestIdentityProvider, credential: String, environment: [String: String] = [:], secrets: [String] = []
    ) async throws -> ProcessResult {
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        let subscriber = try await hub.subscriber(hub: "chat", group: "demo")
        let dir = try TestEnvironment.temporaryDirectory()
        let cfg = try config(dir, hub: hub, credential: credential)
        let input = (1...3).map { #"{"data":{"n":\#($0)}}"# }.joined(separator: "\n") + "\n"
        let result = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["run", "-c", cfg, "--log-level", "debug", "--log-format", "json"], input: input,
            environment: isolated(environment), timeout: 60)
        var got: [JSONValue] = []
        while got.count < 3, let m = await subscriber.expect(type: "message", timeout: .seconds(5)) { got.append(m["data"] ?? .null) }
        await subscriber.close()
        await hub.stop()
        #expect(result.status == 0, "\(result.stderr.suffix(3000))")
        #expect(got.map(\.serialized) == [#"{"n":1}"#, #"{"n":2}"#, #"{"n":3}"#], "\(result.stderr.suffix(3000))")
        #expect(!FileManager.default.fileExists(atPath: dir + "/dead.ndjson"))
        let log = result.stdout + result.stderr
        for s in secrets + idp.issuedTokens { #expect(!log.contains(s), "a secret or token is in the log") }
        // A token's signature part alone must not appear either.
        for token in idp.issuedTokens { #expect(!log.contains(String(token.split(separator: ".").last ?? ""))) }
        return result
    }

    @Test func clientSecretFromAFile() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        let dir = try TestEnvironment.temporaryDirectory()
        try (secret + "\n").write(toFile: dir + "/secret", atomically: true, encoding: .utf8)
        _ = try await deliver(
            idp,
            credential: """
                  credential:
                    type: clientSecret
                    tenantId: \(idp.tenant)
                    clientId: \(clientId)
                    clientSecretFile: \(dir)/secret
                    authorityHost: \(idp.endpoint)
                """, secrets: [secret])
        // One token for the whole run.
        #expect(idp.served.filter { $0.kind == "clientCredentials" }.map(\.status) == [200])
        await idp.stop()
    }

    @Test func workloadIdentityFromTheAKSVariables() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        let assertion = "eyJ.service-account-token.sig"
        idp.register(clientId: clientId, federatedAssertion: assertion)
        let dir = try TestEnvironment.temporaryDirectory()
        try assertion.write(toFile: dir + "/token", atomically: true, encoding: .utf8)
        let environment = [
            "AZURE_TENANT_ID": idp.tenant, "AZURE_CLIENT_ID": clientId, "AZURE_FEDERATED_TOKEN_FILE": dir + "/token",
            "AZURE_AUTHORITY_HOST": idp.endpoint + "/",
        ]
        _ = try await deliver(idp, credential: "  credential: workloadIdentity", environment: environment, secrets: [assertion])
        #expect(idp.served.filter { $0.kind == "clientCredentials" }.map(\.status) == [200])
        await idp.stop()
    }

    @Test func managedIdentityThroughIMDS() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(managedIdentity: clientId)
        _ = try await deliver(
            idp,
            credential: """
                  credential: {type: managedIdentity, clientId: \(clientId), endpoint: "\(idp.endpoint)"}
                """)
        #expect(idp.served.filter { $0.kind == "imds" }.map(\.status) == [200])
        #expect(idp.served.first { $0.kind == "imds" }?.clientId == clientId)
        await idp.stop()
    }

    @Test func managedIdentityThroughIdentityEndpoint() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        let environment = ["IDENTITY_ENDPOINT": idp.endpoint + "/msi/token", "IDENTITY_HEADER": idp.identityHeader]
        _ = try await deliver(idp, credential: "  credential: managedIdentity", environment: environment, secrets: [idp.identityHeader])
        #expect(idp.served.filter { $0.kind == "appService" }.map(\.status) == [200])
        await idp.stop()
    }

    /// `default` with no environment or workload credential set up goes on to the managed
    /// identity, and says which one it uses.
    @Test func defaultChainFallsThroughToManagedIdentity() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        let result = try await deliver(
            idp, credential: "  credential: default", environment: ["AZURE_POD_IDENTITY_AUTHORITY_HOST": idp.endpoint])
        #expect(result.stderr.contains("Entra ID credential chosen") && result.stderr.contains("managedIdentity"), "\(result.stderr.suffix(2000))")
        #expect(idp.served.filter { $0.kind == "imds" }.map(\.status) == [200])
        await idp.stop()
    }

    /// When nothing in the chain works, one error says why each failed, and nothing is sent.
    /// That is the bridge's condition, not the message's: the route waits (it is not
    /// dead-lettered) until SIGTERM ends the run.
    @Test func defaultChainReportsEveryReason() async throws {
        let hub = try await HubProcess(arguments: [])
        let closed = try TestEnvironment.freePort()
        let dir = try TestEnvironment.temporaryDirectory()
        let cfg = try config(dir, hub: hub, credential: "  credential: default")
        let result = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["run", "-c", cfg, "--log-format", "json"], input: #"{"data":1}"# + "\n",
            environment: isolated(["AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:\(closed)", "AZURE_TENANT_ID": "t"]), timeout: 15)
        await hub.stop()
        let dead = (try? String(contentsOfFile: dir + "/dead.ndjson", encoding: .utf8)) ?? ""
        let text = result.stderr
        #expect(text.contains("environment: AZURE_CLIENT_ID, AZURE_CLIENT_SECRET not set"), "\(text.suffix(3000))")
        #expect(text.contains("workloadIdentity: AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE not set"), "\(text.suffix(3000))")
        #expect(text.contains("managedIdentity (IMDS http://127.0.0.1:\(closed))"), "\(text.suffix(3000))")
        #expect(dead.isEmpty, "not the message's fault: \(dead)")
        #expect(text.contains("waits"), "\(text.suffix(3000))")
        #expect(result.status == 0, "SIGTERM after 15 s ends the run cleanly: \(text.suffix(2000))")
    }

    /// A `type: webpubsub` listener of a bridge with an Entra ID credential connects with a
    /// client token the service issued (`:generateToken`) and mirrors what it hears.
    @Test func aListenerConnectsWithAServiceIssuedToken() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        let dir = try TestEnvironment.temporaryDirectory()
        try secret.write(toFile: dir + "/secret", atomically: true, encoding: .utf8)
        let bridge = try BridgeProcess(
            """
            webpubsub:
              endpoint: http://127.0.0.1:\(hub.port)
              hub: chat
              credential: {type: clientSecret, tenantId: \(idp.tenant), clientId: \(clientId), clientSecretFile: secret, authorityHost: "\(idp.endpoint)"}
            sources:
              - {name: room, type: webpubsub, hub: chat, groups: [room]}
            events:
              - {hub: chat, events: ["group:room"], to: {type: file, path: \(dir)/mirrored.ndjson}}
            """, in: dir)
        #expect(await eventually { bridge.log.contains("listener connected") }, "\(bridge.logTail)")
        let cs = try ConnectionString(parsing: hub.connectionString)
        let sender = try await TestWebSocket.connect(
            try ClientAccess.make(
                endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "ann", roles: ["webpubsub.sendToGroup.room"], groups: [],
                expiresIn: .seconds(600)
            ).url, subprotocol: "json.webpubsub.azure.v1")
        #expect(await sender.expect(type: "system", event: "connected") != nil)
        sender.send(
            json: .object([
                ("type", .string("sendToGroup")), ("group", .string("room")), ("dataType", .string("json")),
                ("data", .object([("hi", .number("1"))])),
            ]))
        let mirrored = { (try? String(contentsOfFile: dir + "/mirrored.ndjson", encoding: .utf8)) ?? "" }
        #expect(await eventually { mirrored().contains(#""hi":1"#) }, "\(bridge.logTail)")
        #expect(mirrored().contains(#""userid":"ann""#), "\(mirrored())")
        bridge.terminate()
        _ = await bridge.exitStatus()
        await sender.close()
        await hub.stop()
        // The listener's client token came from the hub, the bridge's REST call from the identity provider.
        #expect(idp.served.filter { $0.kind == "clientCredentials" }.map(\.status) == [200])
        for s in [secret] + idp.issuedTokens { #expect(!bridge.log.contains(s), "a secret or token is in the log") }
        await idp.stop()
    }

    /// `eventHandler` with an Entra ID credential needs the shared secret: the config says so.
    @Test func anEventHandlerWithoutKeyNeedsAnAuthToken() async throws {
        let dir = try TestEnvironment.temporaryDirectory()
        let path = dir + "/bridge.yaml"
        try """
        webpubsub:
          endpoint: https://example.webpubsub.azure.com
          hub: chat
          credential: managedIdentity
        server: {listen: "127.0.0.1:0"}
        eventHandler: {}
        events:
          - {hub: chat, events: [message], to: {type: stdout}}
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["validate", "-c", path])
        #expect(result.status == 1)
        #expect(result.stdout.contains("set eventHandler.authToken"), "\(result.stdout)")
    }

    /// `wps-bridge token` with a credential gets the client token from the service's
    /// `:generateToken`, and the hub accepts a client that connects with it.
    @Test func tokenCommandAsksTheService() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        let result = try await runProcess(
            try TestEnvironment.bridgeBinary(),
            [
                "token", "--hub", "chat", "--user", "ann", "--group", "demo", "--endpoint", "http://127.0.0.1:\(hub.port)", "--credential",
                "clientSecret",
            ],
            environment: isolated([
                "AZURE_TENANT_ID": idp.tenant, "AZURE_CLIENT_ID": clientId, "AZURE_CLIENT_SECRET": secret, "AZURE_AUTHORITY_HOST": idp.endpoint,
            ]))
        #expect(result.status == 0, "\(result.stderr)")
        let url = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(url.hasPrefix("ws://127.0.0.1:\(hub.port)/client/hubs/chat?access_token="), "\(url)")
        let socket = try await TestWebSocket.connect(url, subprotocol: "json.webpubsub.azure.v1")
        let connected = await socket.expect(type: "system", event: "connected")
        #expect(connected?["userId"] == .string("ann"))
        await socket.close()
        await hub.stop()
        await idp.stop()
    }
}
