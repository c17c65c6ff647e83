package import Logging

/// `webpubsub.credential` (and the CLI's `--credential`): which Entra ID credential to use.
package enum CredentialSettings: Sendable, Equatable {
    /// `managedIdentity`: `clientId` picks a user-assigned identity; `endpoint` overrides the IMDS address.
    case managedIdentity(clientId: String?, endpoint: String?)
    /// `workloadIdentity`: each field defaults to its `AZURE_*` variable.
    case workloadIdentity(tenantId: String?, clientId: String?, tokenFile: String?, authorityHost: String?)
    /// `clientSecret`: an app registration's secret.
    case clientSecret(tenantId: String, clientId: String, secret: String, authorityHost: String?)
    /// `default`: environment -> workload identity -> managed identity.
    case `default`(managedIdentityClientId: String?)

    /// The names `type:` takes (besides `accessKey`).
    package static let typeNames = ["managedIdentity", "workloadIdentity", "clientSecret", "default"]

    package var typeName: String {
        switch self {
        case .managedIdentity: "managedIdentity"
        case .workloadIdentity: "workloadIdentity"
        case .clientSecret: "clientSecret"
        case .default: "default"
        }
    }

    /// The credential; fails (``IdentityError/Kind/unavailable``) when a workload identity lacks its settings.
    package func make(environment: [String: String], logger: Logger) throws(IdentityError) -> any TokenCredential {
        switch self {
        case .managedIdentity(let clientId, let endpoint):
            return ManagedIdentityCredential(clientId: clientId, environment: environment, imdsHost: endpoint)
        case .workloadIdentity(let tenantId, let clientId, let tokenFile, let authorityHost):
            return try WorkloadIdentityCredential.fromEnvironment(
                environment, tenantId: tenantId, clientId: clientId, tokenFile: tokenFile, authorityHost: authorityHost)
        case .clientSecret(let tenantId, let clientId, let secret, let authorityHost):
            return ClientSecretCredential(
                tenantId: tenantId, clientId: clientId, authorityHost: authorityHost ?? environment.nonEmpty("AZURE_AUTHORITY_HOST"),
                secret: { secret })
        case .default(let clientId):
            return ChainedCredential.default(environment: environment, managedIdentityClientId: clientId, logger: logger)
        }
    }
}

extension CredentialSettings: CustomStringConvertible {
    /// Names the type and ids, never the secret.
    package var description: String {
        switch self {
        case .managedIdentity(let clientId, _): "managedIdentity" + (clientId.map { " (client id \($0))" } ?? "")
        case .workloadIdentity(_, let clientId, _, _): "workloadIdentity" + (clientId.map { " (client id \($0))" } ?? "")
        case .clientSecret(let tenantId, let clientId, _, _): "clientSecret (tenant \(tenantId), client id \(clientId))"
        case .default: "default (environment, workload identity, managed identity)"
        }
    }
}
