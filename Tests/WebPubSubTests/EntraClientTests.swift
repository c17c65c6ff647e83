import AsyncHTTPClient
import AzureIdentity
import BridgeJSON
import BridgeTestSupport
import Foundation
import Logging
import NIOCore
import Testing
import WebPubSub

/// The REST client with Entra ID credentials against the embedded hub (`--trust-issuer`) and
/// the test identity provider, over real HTTP.
@Suite(.serialized) struct EntraClientTests {
    let clientId = "bbbbbbbb-0000-0000-0000-000000000002"
    let secret = "another-secret-never-logged"

    func credential(_ idp: TestIdentityProvider) -> ClientSecretCredential {
        ClientSecretCredential(tenantId: idp.tenant, clientId: clientId, authorityHost: idp.endpoint, secret: { [secret] in secret })
    }

    /// Posts to the hub's send endpoint with this bearer token; returns the status.
    func post(_ hub: HubProcess, token: String) async throws -> (Int, String) {
        try await postToHub("http://127.0.0.1:\(hub.port)", token: token)
    }

    @Test func theHubChecksIssuerAudienceExpiryAndSignature() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        #expect(try await post(hub, token: idp.mint(expiresIn: .seconds(600))).0 == 202)
        let expired = try await post(hub, token: idp.mint(expiresIn: .seconds(-600)))
        #expect(expired.0 == 401 && expired.1.contains("expired"), "\(expired)")
        let audience = try await post(hub, token: idp.mint(audience: "https://management.azure.com", expiresIn: .seconds(600)))
        #expect(audience.0 == 401 && audience.1.contains("audience"), "\(audience)")
        let untrusted = try await post(hub, token: idp.mint(expiresIn: .seconds(600), issuer: "https://elsewhere.example/v2.0"))
        #expect(untrusted.0 == 401 && untrusted.1.contains("not trusted"), "\(untrusted)")
        // Signed by another key that claims the trusted issuer and key id.
        let forger = try TestIdentityProvider()
        let forged = forger.mint(expiresIn: .seconds(600), issuer: idp.issuer)
        #expect(try await post(hub, token: forged).0 == 401)
        await hub.stop()
        // A hub that trusts no issuer refuses every Entra ID token.
        let plain = try await HubProcess(arguments: [])
        let refused = try await post(plain, token: idp.mint(expiresIn: .seconds(600)))
        #expect(refused.0 == 401 && refused.1.contains("--trust-issuer"), "\(refused)")
        await plain.stop()
        await idp.stop()
    }

    /// Tokens that live 4 s are renewed in the background before they expire: sends over 10 s
    /// never fail and never wait for a token once the first is there.
    @Test func shortLivedTokensAreRenewedWithoutAFailedSend() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        idp.setTokenLifetime(.seconds(4))
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        let client = try WebPubSubServiceClient(endpoint: "http://127.0.0.1:\(hub.port)", authentication: .entra(credential(idp)))
        let subscriber = try await hub.subscriber(hub: "chat", group: "demo")
        let deadline = ContinuousClock.now + .seconds(10)
        var sent = 0
        while ContinuousClock.now < deadline {
            try await client.sendToGroup(hub: "chat", group: "demo", payload: ByteBuffer(string: "m\(sent)"), contentType: "text/plain")
            sent += 1
            try await Task.sleep(for: .milliseconds(100))
        }
        var received = 0
        while received < sent, await subscriber.expect(type: "message", timeout: .seconds(5)) != nil { received += 1 }
        #expect(received == sent)
        let tokenRequests = idp.served.filter { $0.kind == "clientCredentials" }
        // 10 s of 4 s tokens renewed at half-life: about five, all answered.
        #expect(tokenRequests.count >= 3 && tokenRequests.count <= 8, "\(tokenRequests.count) token requests")
        #expect(tokenRequests.allSatisfy { $0.status == 200 })
        await subscriber.close()
        try await client.shutdown()
        await hub.stop()
        await idp.stop()
    }

    @Test func theIdentityEndpointIsRetriedAfter500s() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        idp.failNext(500, 500)
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        let client = try WebPubSubServiceClient(endpoint: "http://127.0.0.1:\(hub.port)", authentication: .entra(credential(idp)))
        try await client.sendToAll(hub: "chat", payload: ByteBuffer(string: "x"), contentType: "text/plain")
        #expect(idp.served.filter { $0.kind == "clientCredentials" }.map(\.status) == [500, 500, 200])
        try await client.shutdown()
        await hub.stop()
        await idp.stop()
    }

    /// Many sends at once with no token yet: one token request.
    @Test func oneRenewalAtATime() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        let cache = TokenCache(credential: credential(idp), scope: WebPubSubServiceClient.entraScope)
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<20 { group.addTask { try await cache.token() } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(Set(tokens).count == 1)
        #expect(idp.served.filter { $0.kind == "clientCredentials" }.count == 1)
        await idp.stop()
    }

    @Test func aWrongSecretIsReportedWithEntraIDsReason() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: "the-right-one")
        let cache = TokenCache(credential: credential(idp), scope: WebPubSubServiceClient.entraScope)
        do {
            _ = try await cache.token()
            Issue.record("a wrong secret got a token")
        } catch {
            #expect(error.kind == .refused)
            #expect(error.message.contains("HTTP 401: invalid_client: AADSTS7000215"), "\(error.message)")
            #expect(!error.message.contains(secret))
        }
        // Refusals are not retried.
        #expect(idp.served.count == 1)
        await idp.stop()
    }

    /// With Entra ID the client asks the service for client tokens (`:generateToken`).
    @Test func clientAccessComesFromTheService() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        idp.register(clientId: clientId, secret: secret)
        let hub = try await HubProcess(arguments: ["--trust-issuer", idp.issuer])
        let client = try WebPubSubServiceClient(endpoint: "http://127.0.0.1:\(hub.port)", authentication: .entra(credential(idp)))
        let access = try await client.clientAccess(hub: "chat", userId: "zoe", groups: ["demo"], expiresIn: .seconds(90))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        #expect(await socket.expect(type: "system", event: "connected")?["userId"] == .string("zoe"))
        try await client.sendToGroup(hub: "chat", group: "demo", payload: ByteBuffer(string: "to zoe"), contentType: "text/plain")
        #expect(await socket.expect(type: "message")?["data"] == .string("to zoe"))
        await socket.close()
        try await client.shutdown()
        await hub.stop()
        await idp.stop()
    }
}

extension EntraClientTests {
    /// Once the default chain chose the managed identity, its failures are retried like any
    /// credential's (the one-try probe was only for the choice).
    @Test func theChosenManagedIdentityIsRetried() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        let chain = ChainedCredential.default(environment: ["AZURE_POD_IDENTITY_AUTHORITY_HOST": idp.endpoint], logger: .init(label: "test"))
        _ = try await chain.getToken(scope: WebPubSubServiceClient.entraScope)
        idp.failNext(500)
        _ = try await chain.getToken(scope: WebPubSubServiceClient.entraScope)
        #expect(idp.served.filter { $0.kind == "imds" }.map(\.status) == [200, 500, 200])
        await idp.stop()
    }
}
