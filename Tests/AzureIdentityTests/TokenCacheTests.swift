import Foundation
import Synchronization
import Testing

@testable import AzureIdentity

/// A credential whose tokens live `lifetime` seconds from the test's clock, and that can be
/// made to fail or to hang.
final class FakeCredential: TokenCredential {
    let name = "fake"
    let clock: Mutex<Date>
    let lifetime: TimeInterval
    private let state = Mutex<(calls: Int, failing: Bool, gate: CheckedContinuation<Void, Never>?, holding: Bool)>((0, false, nil, false))

    init(start: Date, lifetime: TimeInterval) {
        clock = Mutex(start)
        self.lifetime = lifetime
    }

    var calls: Int { state.withLock { $0.calls } }
    func fail(_ on: Bool) { state.withLock { $0.failing = on } }
    /// Calls wait until `release()`.
    func hold() { state.withLock { $0.holding = true } }
    func release() {
        let gate = state.withLock { s in
            s.holding = false
            defer { s.gate = nil }
            return s.gate
        }
        gate?.resume()
    }

    func getToken(scope: String) async throws(IdentityError) -> AccessToken {
        let (n, failing, holding) = state.withLock { s in
            s.calls += 1
            return (s.calls, s.failing, s.holding)
        }
        if holding { await withCheckedContinuation { c in state.withLock { $0.gate = c } } }
        if failing { throw IdentityError(.transport, "endpoint down") }
        let now = clock.withLock { $0 }
        return AccessToken(token: "token-\(n)", expiresOn: now.addingTimeInterval(lifetime), now: now)
    }
}

@Suite struct TokenCacheTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func waitFor(_ condition: () async -> Bool) async {
        for _ in 0..<500 {
            if await condition() { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    @Test func refreshTimesFollowTheLifetime() {
        let hour = AccessToken(token: "t", expiresOn: t0.addingTimeInterval(3600), now: t0)
        #expect(hour.refreshOn == t0.addingTimeInterval(3300))
        #expect(hour.usableUntil == t0.addingTimeInterval(3570))
        let short = AccessToken(token: "t", expiresOn: t0.addingTimeInterval(100), now: t0)
        #expect(short.refreshOn == t0.addingTimeInterval(50))
        #expect(short.usableUntil == t0.addingTimeInterval(87.5))
        // An endpoint's refresh_in past the expiry is capped.
        let odd = AccessToken(token: "t", expiresOn: t0.addingTimeInterval(100), refreshOn: t0.addingTimeInterval(200), now: t0)
        #expect(odd.refreshOn == odd.usableUntil)
    }

    @Test func renewsInTheBackgroundAndKeepsTheOldTokenMeanwhile() async throws {
        let credential = FakeCredential(start: t0, lifetime: 100)
        let cache = TokenCache(credential: credential, scope: "s/.default")
        #expect(try await cache.token(now: t0) == "token-1")
        #expect(try await cache.token(now: t0.addingTimeInterval(49)) == "token-1")
        #expect(credential.calls == 1)
        // Past refreshOn: the old token, and a renewal behind it.
        credential.clock.withLock { $0 = t0.addingTimeInterval(60) }
        #expect(try await cache.token(now: t0.addingTimeInterval(60)) == "token-1")
        await waitFor { (try? await cache.token(now: t0.addingTimeInterval(61))) == "token-2" }
        #expect(try await cache.token(now: t0.addingTimeInterval(61)) == "token-2")
        #expect(credential.calls == 2)
    }

    @Test func aFailedRenewalKeepsTheOldTokenAndTriesAgainLater() async throws {
        let credential = FakeCredential(start: t0, lifetime: 100)
        let cache = TokenCache(credential: credential, scope: "s/.default")
        #expect(try await cache.token(now: t0) == "token-1")
        credential.fail(true)
        #expect(try await cache.token(now: t0.addingTimeInterval(60)) == "token-1")
        await waitFor { credential.calls == 2 }
        try await Task.sleep(for: .milliseconds(50))
        // Within the pause (half of what the old token has left: 13.25 s) no new attempt.
        #expect(try await cache.token(now: t0.addingTimeInterval(61)) == "token-1")
        try await Task.sleep(for: .milliseconds(50))
        #expect(credential.calls == 2)
        credential.fail(false)
        credential.clock.withLock { $0 = t0.addingTimeInterval(80) }
        #expect(try await cache.token(now: t0.addingTimeInterval(80)) == "token-1")
        await waitFor { (try? await cache.token(now: t0.addingTimeInterval(81))) == "token-3" }
        #expect(credential.calls == 3)
        #expect(try await cache.token(now: t0.addingTimeInterval(90)) == "token-3")
    }

    @Test func withNoUsableTokenCallersWaitForOneRenewal() async throws {
        let credential = FakeCredential(start: t0, lifetime: 100)
        let cache = TokenCache(credential: credential, scope: "s/.default")
        credential.hold()
        let waiting = (0..<10).map { _ in Task { try await cache.token(now: t0) } }
        await waitFor { credential.calls == 1 }
        try await Task.sleep(for: .milliseconds(50))
        credential.release()
        for task in waiting { #expect(try await task.value == "token-1") }
        #expect(credential.calls == 1)
    }

    /// A cancelled caller stops waiting at once; the renewal goes on for the others.
    @Test func aCancelledCallerStopsWaiting() async throws {
        let credential = FakeCredential(start: t0, lifetime: 100)
        let cache = TokenCache(credential: credential, scope: "s/.default")
        credential.hold()
        let cancelled = Task { try await cache.token(now: t0) }
        let patient = Task { try await cache.token(now: t0) }
        await waitFor { credential.calls == 1 }
        cancelled.cancel()
        do {
            _ = try await cancelled.value
            Issue.record("a cancelled caller got a token")
        } catch let error as IdentityError {
            #expect(error.kind == .cancelled)
        }
        credential.release()
        #expect(try await patient.value == "token-1")
        #expect(credential.calls == 1)
    }

    @Test func aSecretGoesOverHTTPSOnlyUnlessToLoopback() async {
        let credential = ClientSecretCredential(tenantId: "t", clientId: "c", authorityHost: "http://login.example.com", secret: { "x" })
        do {
            _ = try await credential.getToken(scope: "https://webpubsub.azure.com/.default")
            Issue.record("sent a secret over plain http")
        } catch {
            #expect(error.kind == .refused && error.message.contains("not https"), "\(error)")
        }
        #expect(isLoopback("http://127.0.0.1:8080") && isLoopback("http://localhost/x") && isLoopback("http://[::1]:1"))
        #expect(!isLoopback("http://login.example.com") && !isLoopback("http://10.0.0.1"))
    }

    @Test func managedIdentityPicksItsEndpoint() {
        func source(_ env: [String: String], imds: String? = nil) -> ManagedIdentityCredential.Source {
            ManagedIdentityCredential(environment: env, imdsHost: imds).source
        }
        #expect(source([:]) == .imds(host: "http://169.254.169.254"))
        #expect(source(["AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9/"]) == .imds(host: "http://127.0.0.1:9"))
        #expect(source(["IDENTITY_ENDPOINT": "http://e/msi", "IDENTITY_HEADER": "h"]) == .appService(endpoint: "http://e/msi", header: "h"))
        // The config's endpoint wins over the environment.
        #expect(
            source(["IDENTITY_ENDPOINT": "http://e/msi", "IDENTITY_HEADER": "h"], imds: "http://127.0.0.1:7") == .imds(host: "http://127.0.0.1:7"))
        if case .unsupported = source(["IDENTITY_ENDPOINT": "http://e", "IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": "x"]) {
        } else {
            Issue.record("Service Fabric taken for App Service")
        }
        if case .unsupported = source(["IDENTITY_ENDPOINT": "http://e", "IMDS_ENDPOINT": "http://i"]) {
        } else {
            Issue.record("Azure Arc taken for IMDS")
        }
    }
}
