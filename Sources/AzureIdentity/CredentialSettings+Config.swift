package import BridgeConfig

/// Entra ID credential settings, made the same way from a config file (`webpubsub.credential`)
/// and from the CLI's flags (`--credential` and friends): one ``make(type:values:)`` checks them.
extension CredentialSettings {
    /// One thing wrong, with the setting it is about (nil: the credential as a whole).
    package struct Problem: Error, Sendable, Equatable {
        package let key: String?
        package let message: String
    }

    /// Every problem found, not only the first.
    package struct Problems: Error, Sendable {
        package let all: [Problem]
    }

    /// The settings each credential type takes; nil for an unknown type.
    package static func keys(of type: String) -> [String]? {
        switch type {
        case "managedIdentity": ["clientId", "endpoint"]
        case "workloadIdentity": ["tenantId", "clientId", "tokenFile", "authorityHost"]
        case "clientSecret": ["tenantId", "clientId", "clientSecret", "authorityHost"]
        case "default": ["managedIdentityClientId"]
        default: nil
        }
    }

    /// Settings of `type` from named values (a secret already read from its file).
    package static func make(type: String, values: [String: String]) throws(Problems) -> CredentialSettings {
        guard let keys = keys(of: type) else {
            throw Problems(all: [Problem(key: nil, message: "unknown credential type '\(type)'; known: \(typeNames.joined(separator: ", "))")])
        }
        var problems: [Problem] = []
        for key in ["endpoint", "authorityHost"] where keys.contains(key) {
            if let url = values[key], !(url.hasPrefix("http://") || url.hasPrefix("https://")) {
                problems.append(Problem(key: key, message: "'\(key)' must be an http:// or https:// URL"))
            }
        }
        if type == "clientSecret" {
            let missing = ["tenantId", "clientId", "clientSecret"].filter { values[$0] == nil }
            if !missing.isEmpty {
                problems.append(
                    Problem(
                        key: nil,
                        message: "a clientSecret credential needs tenantId, clientId and clientSecret (or clientSecretFile): missing "
                            + missing.map { "'\($0)'" }.joined(separator: ", ")))
            }
        }
        guard problems.isEmpty else { throw Problems(all: problems) }
        switch type {
        case "managedIdentity":
            return .managedIdentity(clientId: values["clientId"], endpoint: values["endpoint"])
        case "workloadIdentity":
            return .workloadIdentity(
                tenantId: values["tenantId"], clientId: values["clientId"], tokenFile: values["tokenFile"], authorityHost: values["authorityHost"])
        case "clientSecret":
            return .clientSecret(
                tenantId: values["tenantId"]!, clientId: values["clientId"]!, secret: values["clientSecret"]!, authorityHost: values["authorityHost"])
        default:
            return .default(managedIdentityClientId: values["managedIdentityClientId"])
        }
    }

    /// Reads the settings of an Entra ID credential of `type` from `m` (the `credential:`
    /// mapping; nil when it was given as a bare type name), reporting each problem at its key,
    /// or at `v` (the `credential` value itself).
    package static func read(type: String, _ m: ConfigMapping?, at v: ConfigValue) -> CredentialSettings? {
        guard let keys = keys(of: type) else { return nil }
        m?.checkKeys(["type"] + keys + (type == "clientSecret" ? ["clientSecretFile"] : []), what: "a \(type) credential")
        var values: [String: String] = [:]
        for key in keys where key != "clientSecret" { values[key] = m?.nonEmptyString(key) }
        if type == "clientSecret" { values["clientSecret"] = m?.secret("clientSecret") }
        if let m, let file = values["tokenFile"] { values["tokenFile"] = m.reader.absolutePath(file) }
        do {
            return try make(type: type, values: values)
        } catch {
            for problem in error.all {
                (problem.key.flatMap { m?.value($0) } ?? v).report(problem.message)
            }
            return nil
        }
    }
}
