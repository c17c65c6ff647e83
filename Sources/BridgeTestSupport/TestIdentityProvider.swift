import BridgeCrypto
import BridgeJSON
package import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization
import WebPubSub

/// An Entra ID stand-in on a loopback port, for tests: the OAuth2 client-credentials grant
/// (`POST /{tenant}/oauth2/v2.0/token` with a client secret or a federated client assertion),
/// the managed-identity endpoints (IMDS `GET /metadata/identity/oauth2/token` with
/// `Metadata: true`; App Service `GET /msi/token` with `X-IDENTITY-HEADER`), and OpenID
/// discovery with a JWKS. Tokens are RS256 JWTs, issuer `{endpoint}/{tenant}/v2.0`, audience
/// the requested resource.
package final class TestIdentityProvider: Sendable {
    package let tenant = "11111111-2222-3333-4444-555555555555"
    /// The signing keys the JWKS publishes, by key id; tokens are signed with the last.
    private let signingKeys: Mutex<[(id: String, key: RSAPrivateKey)]>
    /// The key id new tokens carry.
    package var keyId: String { signingKeys.withLock { $0.last!.id } }

    /// What a request was and what it got.
    package struct Served: Sendable {
        /// `clientCredentials`, `imds`, `appService`, `discovery`, `jwks`
        package let kind: String
        package let status: Int
        package let clientId: String?
        package let at: Date
    }

    private struct State {
        var secrets: [String: String] = [:]
        var assertions: [String: String] = [:]
        var managedIdentities: Set<String> = []
        var identityHeader = "test-identity-header"
        var lifetime: Duration = .seconds(3600)
        var failures: [Int] = []
        var served: [Served] = []
        var issued: [String] = []
    }

    private let state = Mutex(State())
    private let server = LoopbackServer()

    package init() throws {
        signingKeys = Mutex([(id: "test-key-1", key: try RSAPrivateKey(bits: 2048))])
    }

    package var port: Int { server.port }
    package var endpoint: String { "http://127.0.0.1:\(port)" }
    /// The `iss` of every token: what the hub's `--trust-issuer` takes.
    package var issuer: String { "\(endpoint)/\(tenant)/v2.0" }
    package var served: [Served] { state.withLock { $0.served } }
    /// Every access token handed out.
    package var issuedTokens: [String] { state.withLock { $0.issued } }
    package var identityHeader: String { state.withLock { $0.identityHeader } }

    /// An app registration that authenticates with `secret`.
    package func register(clientId: String, secret: String) { state.withLock { $0.secrets[clientId] = secret } }
    /// An app registration whose federated credential accepts `assertion` (the service-account token).
    package func register(clientId: String, federatedAssertion: String) { state.withLock { $0.assertions[clientId] = federatedAssertion } }
    /// A user-assigned managed identity; without a `client_id` the system-assigned one answers.
    package func register(managedIdentity clientId: String) { state.withLock { _ = $0.managedIdentities.insert(clientId) } }
    /// How long new tokens live.
    package func setTokenLifetime(_ lifetime: Duration) { state.withLock { $0.lifetime = lifetime } }
    /// The next token requests (of any kind) are answered with these statuses, in order.
    package func failNext(_ statuses: Int...) { state.withLock { $0.failures += statuses } }

    /// A token signed with the provider's key, with any claims (for tokens a hub must refuse);
    /// `keyId` overrides the `kid` the header names.
    package func mint(
        audience: String = "https://webpubsub.azure.com", subject: String = "test", expiresIn: Duration, issuer: String? = nil,
        keyId: String? = nil
    ) -> String {
        let now = Int(Date().timeIntervalSince1970)
        let claims: [(String, JSONValue)] = [
            ("aud", .string(audience)), ("iss", .string(issuer ?? self.issuer)), ("iat", .number(String(now))), ("nbf", .number(String(now - 60))),
            ("exp", .number(String(now + Int(expiresIn.components.seconds)))), ("sub", .string(subject)), ("tid", .string(tenant)),
        ]
        return sign(claims, keyId: keyId)
    }

    /// Rotates the signing key: a new key (and key id) signs from now on; the old one is
    /// unpublished at once, or kept in the JWKS too when `keepOld`.
    package func rotateKeys(keepOld: Bool = false) throws {
        let key = try RSAPrivateKey(bits: 2048)
        signingKeys.withLock { keys in
            let id = "test-key-\(Int(keys.last!.id.split(separator: "-").last!)! + 1)"
            keys = (keepOld ? keys : []) + [(id: id, key: key)]
        }
    }

    func sign(_ claims: [(String, JSONValue)], keyId named: String? = nil) -> String {
        let (current, key) = signingKeys.withLock { ($0.last!.id, $0.last!.key) }
        let keyId = named ?? current
        let header = JSONValue.object([("alg", .string("RS256")), ("typ", .string("JWT")), ("kid", .string(keyId))]).serialized
        let input = AccessKeyJWT.base64URL(Array(header.utf8)) + "." + AccessKeyJWT.base64URL(Array(JSONValue.object(claims).serialized.utf8))
        let signature = try! key.rs256Signature(for: Array(input.utf8))
        return input + "." + AccessKeyJWT.base64URL(signature)
    }

    package func start() async throws {
        try await server.start(label: "test identity provider") { [self] request in try await self.handle(request) }
    }

    package func stop() async { await server.stop() }

    private func json(_ status: Int, _ value: JSONValue) -> Response {
        Response(
            status: .init(code: status), headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: value.serialized)))
    }

    private func oauthError(_ status: Int, _ code: String, _ description: String) -> Response {
        json(status, .object([("error", .string(code)), ("error_description", .string(description + "\nTrace ID: test"))]))
    }

    private func record(_ kind: String, _ status: Int, _ clientId: String?) {
        state.withLock { $0.served.append(Served(kind: kind, status: status, clientId: clientId, at: Date())) }
    }

    /// An injected failure, when one is due.
    private func injectedFailure(_ kind: String, _ clientId: String?) -> Response? {
        guard let status = state.withLock({ $0.failures.isEmpty ? nil : $0.failures.removeFirst() }) else { return nil }
        record(kind, status, clientId)
        return json(status, .object([("error", .string("temporarily_unavailable")), ("error_description", .string("injected failure"))]))
    }

    private func issue(resource: String, clientId: String) -> (token: String, lifetime: Int) {
        let lifetime = state.withLock { Int($0.lifetime.components.seconds) }
        let now = Int(Date().timeIntervalSince1970)
        let token = sign([
            ("aud", .string(resource)), ("iss", .string(issuer)), ("iat", .number(String(now))), ("nbf", .number(String(now))),
            ("exp", .number(String(now + lifetime))), ("appid", .string(clientId)), ("oid", .string(clientId)), ("sub", .string(clientId)),
            ("tid", .string(tenant)),
        ])
        state.withLock { $0.issued.append(token) }
        return (token, lifetime)
    }

    private func handle(_ request: Request) async throws -> Response {
        var request = request
        let body = try await request.collectBody(upTo: 1024 * 1024)
        let path = request.uri.path
        let query = Query(request.uri.query)
        switch (request.method, path) {
        case (.get, "/\(tenant)/v2.0/.well-known/openid-configuration"):
            record("discovery", 200, nil)
            return json(
                200,
                .object([
                    ("issuer", .string(issuer)), ("jwks_uri", .string("\(endpoint)/\(tenant)/discovery/v2.0/keys")),
                    ("token_endpoint", .string("\(endpoint)/\(tenant)/oauth2/v2.0/token")),
                ]))
        case (.get, "/\(tenant)/discovery/v2.0/keys"):
            record("jwks", 200, nil)
            let jwks = signingKeys.withLock { keys in
                keys.map { id, key in
                    JSONValue.object([
                        ("kty", .string("RSA")), ("use", .string("sig")), ("kid", .string(id)), ("alg", .string("RS256")),
                        ("n", .string(AccessKeyJWT.base64URL(key.modulus))), ("e", .string(AccessKeyJWT.base64URL(key.exponent))),
                    ])
                }
            }
            return json(200, .object([("keys", .array(jwks))]))
        case (.post, "/\(tenant)/oauth2/v2.0/token"):
            let form = Query(String(decoding: body.readableBytesView, as: UTF8.self))
            let clientId = form.first("client_id")
            if let failure = injectedFailure("clientCredentials", clientId) { return failure }
            let answer = clientCredentials(form)
            record("clientCredentials", Int(answer.status.code), clientId)
            return answer
        case (.get, "/metadata/identity/oauth2/token"):
            let clientId = query.first("client_id")
            guard request.headers[HTTPField.Name("Metadata")!] == "true" else {
                record("imds", 400, clientId)
                return json(
                    400, .object([("error", .string("invalid_request")), ("error_description", .string("Required metadata header not specified"))]))
            }
            if let failure = injectedFailure("imds", clientId) { return failure }
            let answer = managedIdentity(query, apiVersion: "2018-02-01")
            record("imds", Int(answer.status.code), clientId)
            return answer
        case (.get, "/msi/token"):
            let clientId = query.first("client_id")
            guard request.headers[HTTPField.Name("X-IDENTITY-HEADER")!] == identityHeader else {
                record("appService", 401, clientId)
                return json(401, .object([("message", .string("missing or wrong X-IDENTITY-HEADER"))]))
            }
            if let failure = injectedFailure("appService", clientId) { return failure }
            let answer = managedIdentity(query, apiVersion: "2019-08-01")
            record("appService", Int(answer.status.code), clientId)
            return answer
        default:
            return json(404, .object([("error", .string("not_found"))]))
        }
    }

    private func clientCredentials(_ form: Query) -> Response {
        guard form.first("grant_type") == "client_credentials" else {
            return oauthError(400, "unsupported_grant_type", "AADSTS70003: grant_type must be client_credentials")
        }
        guard let clientId = form.first("client_id") else { return oauthError(400, "invalid_request", "AADSTS900144: client_id is missing") }
        guard let scope = form.first("scope"), scope.hasSuffix("/.default") else {
            return oauthError(400, "invalid_scope", "AADSTS1002012: the scope must end with /.default")
        }
        let (secrets, assertions) = state.withLock { ($0.secrets, $0.assertions) }
        if let secret = form.first("client_secret") {
            guard let expected = secrets[clientId], constantTimeEquals(expected, secret) else {
                return oauthError(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
            }
        } else if let assertion = form.first("client_assertion") {
            guard form.first("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" else {
                return oauthError(400, "invalid_request", "AADSTS50027: client_assertion_type is wrong")
            }
            guard let expected = assertions[clientId], constantTimeEquals(expected, assertion) else {
                return oauthError(401, "invalid_client", "AADSTS70021: No matching federated identity record found for presented assertion.")
            }
        } else {
            return oauthError(401, "invalid_client", "AADSTS7000216: client_assertion or client_secret is required")
        }
        let (token, lifetime) = issue(resource: String(scope.dropLast("/.default".count)), clientId: clientId)
        return json(
            200,
            .object([
                ("token_type", .string("Bearer")), ("expires_in", .number(String(lifetime))), ("ext_expires_in", .number(String(lifetime))),
                ("access_token", .string(token)),
            ]))
    }

    private func managedIdentity(_ query: Query, apiVersion: String) -> Response {
        guard query.first("api-version") == apiVersion else {
            return json(400, .object([("error", .string("invalid_request")), ("error_description", .string("api-version \(apiVersion) expected"))]))
        }
        guard let resource = query.first("resource"), !resource.isEmpty else {
            return json(400, .object([("error", .string("invalid_request")), ("error_description", .string("resource is required"))]))
        }
        let clientId = query.first("client_id") ?? "system-assigned"
        if query.first("client_id") != nil, !state.withLock({ $0.managedIdentities.contains(clientId) }) {
            return json(400, .object([("error", .string("invalid_request")), ("error_description", .string("Identity not found"))]))
        }
        let (token, lifetime) = issue(resource: resource, clientId: clientId)
        let expiresOn = Int(Date().timeIntervalSince1970) + lifetime
        return json(
            200,
            .object([
                ("access_token", .string(token)), ("expires_on", .string(String(expiresOn))), ("expires_in", .string(String(lifetime))),
                ("resource", .string(resource)), ("token_type", .string("Bearer")), ("client_id", .string(clientId)),
            ]))
    }
}
