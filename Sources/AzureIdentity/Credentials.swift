import BridgeJSON
import BridgeObservability
import Foundation
package import Logging
import NIOHTTP1
import Synchronization

/// Entra ID's public cloud; `AZURE_AUTHORITY_HOST` or `authorityHost` name another.
package let defaultAuthorityHost = "https://login.microsoftonline.com"

/// The OAuth2 client-credentials grant at `{authorityHost}/{tenant}/oauth2/v2.0/token`, with a
/// client secret or a client assertion (a federated token read from a file).
package struct ClientCredentialsFlow: Sendable {
    package enum Proof: Sendable {
        /// A secret (the config's, read when it was loaded).
        case secret(@Sendable () throws(IdentityError) -> String)
        /// A signed assertion read from this file each time (Kubernetes rotates it).
        case assertionFile(String)
    }

    package var tenantId: String
    package var clientId: String
    package var authorityHost: String
    package var proof: Proof
    var http = IdentityHTTP()

    package init(tenantId: String, clientId: String, authorityHost: String?, proof: Proof) {
        self.tenantId = tenantId
        self.clientId = clientId
        var host = authorityHost ?? defaultAuthorityHost
        while host.hasSuffix("/") { host.removeLast() }
        self.authorityHost = host
        self.proof = proof
    }

    package var tokenURL: String { "\(authorityHost)/\(tenantId)/oauth2/v2.0/token" }

    func getToken(scope: String, what: String) async throws(IdentityError) -> AccessToken {
        guard authorityHost.lowercased().hasPrefix("https://") || isLoopback(authorityHost) else {
            throw IdentityError(
                .refused, "\(what): the authority host \(authorityHost) is not https: a secret goes over https only (or to a loopback address)")
        }
        var form = [("grant_type", "client_credentials"), ("client_id", clientId), ("scope", scope)]
        switch proof {
        case .secret(let read):
            form.append(("client_secret", try read()))
        case .assertionFile(let path):
            let assertion: String
            do {
                assertion = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw IdentityError(.unavailable, "\(what): cannot read the federated token file \(path): \(error.localizedDescription)")
            }
            guard !assertion.isEmpty else { throw IdentityError(.unavailable, "\(what): the federated token file \(path) is empty") }
            form += [("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"), ("client_assertion", assertion)]
        }
        let response = try await http.send(.POST, tokenURL, form: form, what: "\(what) (\(tokenURL))")
        return try parseToken(response, what: "\(what) (\(tokenURL))")
    }
}

/// `credential: {type: clientSecret, tenantId, clientId, clientSecret | clientSecretFile}`.
package struct ClientSecretCredential: TokenCredential {
    package let name = "clientSecret"
    package let flow: ClientCredentialsFlow

    package init(tenantId: String, clientId: String, authorityHost: String? = nil, secret: @escaping @Sendable () throws(IdentityError) -> String) {
        flow = ClientCredentialsFlow(tenantId: tenantId, clientId: clientId, authorityHost: authorityHost, proof: .secret(secret))
    }

    package func getToken(scope: String) async throws(IdentityError) -> AccessToken {
        try await flow.getToken(scope: scope, what: name)
    }
}

/// `credential: {type: workloadIdentity}`: AKS workload identity, a Kubernetes service-account
/// token exchanged for an Entra ID token (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
/// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`, each overridable in the config).
package struct WorkloadIdentityCredential: TokenCredential {
    package let name = "workloadIdentity"
    package let flow: ClientCredentialsFlow

    package init(tenantId: String, clientId: String, tokenFile: String, authorityHost: String? = nil) {
        flow = ClientCredentialsFlow(tenantId: tenantId, clientId: clientId, authorityHost: authorityHost, proof: .assertionFile(tokenFile))
    }

    /// From the variables AKS sets; `unavailable` naming what is missing.
    package static func fromEnvironment(
        _ environment: [String: String], tenantId: String? = nil, clientId: String? = nil, tokenFile: String? = nil,
        authorityHost: String? = nil
    ) throws(IdentityError) -> WorkloadIdentityCredential {
        let tenant = tenantId ?? environment.nonEmpty("AZURE_TENANT_ID")
        let client = clientId ?? environment.nonEmpty("AZURE_CLIENT_ID")
        let file = tokenFile ?? environment.nonEmpty("AZURE_FEDERATED_TOKEN_FILE")
        let missing = [("AZURE_TENANT_ID", tenant), ("AZURE_CLIENT_ID", client), ("AZURE_FEDERATED_TOKEN_FILE", file)].filter { $0.1 == nil }.map(\.0)
        guard let tenant, let client, let file else {
            throw IdentityError(.unavailable, "workloadIdentity: \(missing.joined(separator: ", ")) not set")
        }
        return WorkloadIdentityCredential(
            tenantId: tenant, clientId: client, tokenFile: file, authorityHost: authorityHost ?? environment.nonEmpty("AZURE_AUTHORITY_HOST"))
    }

    package func getToken(scope: String) async throws(IdentityError) -> AccessToken {
        try await flow.getToken(scope: scope, what: name)
    }
}

/// `credential: {type: environment}` and the first link of `default`: a client secret from
/// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` (and `AZURE_AUTHORITY_HOST`).
package struct EnvironmentCredential: TokenCredential {
    package let name = "environment"
    let inner: ClientSecretCredential

    package init(_ environment: [String: String]) throws(IdentityError) {
        let tenant = environment.nonEmpty("AZURE_TENANT_ID")
        let client = environment.nonEmpty("AZURE_CLIENT_ID")
        let secret = environment.nonEmpty("AZURE_CLIENT_SECRET")
        guard let tenant, let client, let secret else {
            let missing = [("AZURE_TENANT_ID", tenant), ("AZURE_CLIENT_ID", client), ("AZURE_CLIENT_SECRET", secret)].filter { $0.1 == nil }.map(\.0)
            var why = "environment: \(missing.joined(separator: ", ")) not set"
            if environment.nonEmpty("AZURE_CLIENT_CERTIFICATE_PATH") != nil {
                why += " (certificate credentials are not supported; use a secret, workload identity or managed identity)"
            }
            throw IdentityError(.unavailable, why)
        }
        inner = ClientSecretCredential(
            tenantId: tenant, clientId: client, authorityHost: environment.nonEmpty("AZURE_AUTHORITY_HOST"), secret: { secret })
    }

    package func getToken(scope: String) async throws(IdentityError) -> AccessToken {
        try await inner.flow.getToken(scope: scope, what: name)
    }
}

/// `credential: {type: managedIdentity, clientId?}`: the identity of the VM, pod, App Service or
/// Container App. With `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` set (App Service, Container
/// Apps, Functions) it asks that endpoint; otherwise the instance metadata service (IMDS) at
/// 169.254.169.254, or `AZURE_POD_IDENTITY_AUTHORITY_HOST` / the `endpoint` setting.
package struct ManagedIdentityCredential: TokenCredential {
    package let name = "managedIdentity"

    package enum Source: Sendable, Equatable {
        /// `GET {endpoint}?api-version=2019-08-01&resource=...` with `X-IDENTITY-HEADER`.
        case appService(endpoint: String, header: String)
        /// `GET {host}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=...` with `Metadata: true`.
        case imds(host: String)
        /// An environment this build does not speak to (Service Fabric, Azure Arc).
        case unsupported(String)
    }

    package static let imdsHost = "http://169.254.169.254"

    package let clientId: String?
    package let source: Source
    var http: IdentityHTTP
    /// In a chain: an IMDS that does not answer within a second means "no managed identity here".
    let probing: Bool

    /// - Parameter imdsHost: the IMDS address, from the config; it wins over the environment.
    package init(clientId: String? = nil, environment: [String: String], imdsHost: String? = nil, probing: Bool = false) {
        self.clientId = clientId
        self.probing = probing
        func imds(_ raw: String) -> Source {
            var host = raw
            while host.hasSuffix("/") { host.removeLast() }
            return .imds(host: host)
        }
        if let imdsHost {
            source = imds(imdsHost)
        } else if environment.nonEmpty("IDENTITY_SERVER_THUMBPRINT") != nil {
            source = .unsupported("Service Fabric managed identity (IDENTITY_SERVER_THUMBPRINT is set) is not supported")
        } else if let endpoint = environment.nonEmpty("IDENTITY_ENDPOINT"), environment.nonEmpty("IMDS_ENDPOINT") != nil {
            source = .unsupported("Azure Arc managed identity (IDENTITY_ENDPOINT with IMDS_ENDPOINT, \(endpoint)) is not supported")
        } else if let endpoint = environment.nonEmpty("IDENTITY_ENDPOINT"), let header = environment.nonEmpty("IDENTITY_HEADER") {
            source = .appService(endpoint: endpoint, header: header)
        } else {
            source = imds(environment.nonEmpty("AZURE_POD_IDENTITY_AUTHORITY_HOST") ?? Self.imdsHost)
        }
        var http = IdentityHTTP()
        if case .imds = source {
            // IMDS answers 404 and 410 while it starts or updates; Azure asks clients to keep trying
            // for at least 70 s: 1 + 2 + 4 + 8 + 16 + 32 s (plus jitter).
            http.retryStatuses.formUnion([404, 410])
            http.backoff = .seconds(1)
            http.retries = 6
        }
        self.http = http
    }

    init(clientId: String?, source: Source, http: IdentityHTTP, probing: Bool) {
        self.clientId = clientId
        self.source = source
        self.http = http
        self.probing = probing
    }

    /// The same credential for use once a chain chose it: full timeouts and retries.
    package func withoutProbing() -> ManagedIdentityCredential {
        ManagedIdentityCredential(clientId: clientId, source: source, http: http, probing: false)
    }

    package func getToken(scope: String) async throws(IdentityError) -> AccessToken {
        // Managed identity endpoints take a resource, not a scope.
        var resource = scope
        if resource.hasSuffix("/.default") { resource.removeLast("/.default".count) }
        var query = [("resource", resource)]
        if let clientId { query.append(("client_id", clientId)) }
        let url: String
        let headers: [(String, String)]
        let what: String
        switch source {
        case .appService(let endpoint, let header):
            url = endpoint + (endpoint.contains("?") ? "&" : "?") + encodeQuery([("api-version", "2019-08-01")] + query)
            headers = [("X-IDENTITY-HEADER", header)]
            what = "managedIdentity (IDENTITY_ENDPOINT \(endpoint))"
        case .imds(let host):
            url = host + "/metadata/identity/oauth2/token?" + encodeQuery([("api-version", "2018-02-01")] + query)
            headers = [("Metadata", "true")]
            what = "managedIdentity (IMDS \(host))"
        case .unsupported(let why):
            throw IdentityError(.unavailable, "managedIdentity: \(why)")
        }
        if probing, case .imds = source {
            // In a chain, the first answer decides whether there is an IMDS at all: one try,
            // a few seconds. Once it answered, a failure is retried as usual.
            var probe = http
            probe.retries = 0
            probe.timeout = .seconds(3)
            let response: IdentityHTTP.Response
            do {
                response = try await probe.send(.GET, url, headers: headers, what: what)
            } catch {
                throw IdentityError(.unavailable, "\(error.message) (no managed identity endpoint here)")
            }
            // IMDS says 400 when the VM has no identity (or not the one asked for).
            if response.status == 400 || response.status == 404 {
                throw IdentityError(.unavailable, "\(what): HTTP \(response.status)\(errorText(response.json))")
            }
            if !http.retryStatuses.contains(response.status) { return try parseToken(response, what: what) }
        }
        return try parseToken(try await http.send(.GET, url, headers: headers, what: what), what: what)
    }
}

/// Tries credentials in order, as `DefaultAzureCredential` does: one that is not set up here
/// (``IdentityError/Kind/unavailable``) passes to the next; one that is set up but fails ends
/// the search. The first that works is used from then on, and named once in the log.
package final class ChainedCredential: TokenCredential {
    package let name: String
    package let links: [@Sendable () -> Result<any TokenCredential, IdentityError>]
    let logger: Logger
    private let chosen = Mutex<(any TokenCredential)?>(nil)

    /// `links` are built lazily so that one that cannot be set up (a variable missing) is a
    /// reason in the error rather than a failure to start.
    package init(name: String, links: [@Sendable () -> Result<any TokenCredential, IdentityError>], logger: Logger) {
        self.name = name
        self.links = links
        self.logger = logger
    }

    /// environment -> workload identity -> managed identity.
    package static func `default`(environment: [String: String], managedIdentityClientId: String? = nil, logger: Logger) -> ChainedCredential {
        ChainedCredential(
            name: "default",
            links: [
                { Result { () throws(IdentityError) -> any TokenCredential in try EnvironmentCredential(environment) } },
                { Result { () throws(IdentityError) -> any TokenCredential in try WorkloadIdentityCredential.fromEnvironment(environment) } },
                {
                    .success(
                        ManagedIdentityCredential(
                            clientId: managedIdentityClientId ?? environment.nonEmpty("AZURE_CLIENT_ID"), environment: environment, probing: true))
                },
            ], logger: logger)
    }

    package func getToken(scope: String) async throws(IdentityError) -> AccessToken {
        if let chosen = chosen.withLock({ $0 }) { return try await chosen.getToken(scope: scope) }
        var reasons: [String] = []
        for link in links {
            let credential: any TokenCredential
            switch link() {
            case .success(let c): credential = c
            case .failure(let error):
                reasons.append(error.message)
                continue
            }
            do {
                let token = try await credential.getToken(scope: scope)
                // Probing was for the choice: from now on, full timeouts and retries.
                let kept = (credential as? ManagedIdentityCredential)?.withoutProbing() ?? credential
                chosen.withLock { $0 = kept }
                logger.notice("Entra ID credential chosen", metadata: [LogKey.credential: "\(credential.name)", LogKey.credentialChain: "\(name)"])
                return token
            } catch  where error.kind == .unavailable {
                reasons.append(error.message)
            } catch {
                reasons.append(error.message)
                throw IdentityError(error.kind, "\(name) credential: \(reasons.joined(separator: "; "))")
            }
        }
        throw IdentityError(.unavailable, "\(name) credential: none worked: \(reasons.joined(separator: "; "))")
    }
}

func encodeQuery(_ pairs: [(String, String)]) -> String {
    pairs.map { percentEncodeUnreserved($0.0) + "=" + percentEncodeUnreserved($0.1) }.joined(separator: "&")
}

extension Dictionary where Key == String, Value == String {
    func nonEmpty(_ name: String) -> String? {
        guard let v = self[name], !v.isEmpty else { return nil }
        return v
    }
}
