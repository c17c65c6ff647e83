import Testing

@testable import AzureIdentity

/// The one set of rules for Entra ID credential settings, from a file or from flags.
@Suite struct CredentialSettingsTests {
    @Test func makesEachType() throws {
        #expect(try CredentialSettings.make(type: "managedIdentity", values: ["clientId": "c"]) == .managedIdentity(clientId: "c", endpoint: nil))
        #expect(
            try CredentialSettings.make(type: "workloadIdentity", values: ["tokenFile": "/t"])
                == .workloadIdentity(tenantId: nil, clientId: nil, tokenFile: "/t", authorityHost: nil))
        #expect(
            try CredentialSettings.make(type: "clientSecret", values: ["tenantId": "t", "clientId": "c", "clientSecret": "s"])
                == .clientSecret(tenantId: "t", clientId: "c", secret: "s", authorityHost: nil))
        #expect(try CredentialSettings.make(type: "default", values: [:]) == .default(managedIdentityClientId: nil))
    }

    @Test func reportsEveryProblemWithItsKey() {
        #expect {
            _ = try CredentialSettings.make(type: "clientSecret", values: ["clientId": "c", "authorityHost": "login.example"])
        } throws: { error in
            let all = (error as? CredentialSettings.Problems)?.all ?? []
            return all.count == 2 && all.contains { $0.key == "authorityHost" && $0.message.contains("http:// or https://") }
                && all.contains { $0.key == nil && $0.message.contains("missing 'tenantId', 'clientSecret'") }
        }
        #expect {
            _ = try CredentialSettings.make(type: "password", values: [:])
        } throws: { error in
            (error as? CredentialSettings.Problems)?.all.first?.message.contains("unknown credential type 'password'") == true
        }
    }
}
