import Foundation
import Synchronization

/// An Entra ID access token and when to stop using it.
public struct AccessToken: Sendable {
    /// The bearer token. Never logged: `description` is redacted.
    public var token: String
    public var expiresOn: Date
    /// When to get a new one (the identity endpoint's `refresh_in`, or a share of the lifetime).
    public var refreshOn: Date

    public init(token: String, expiresOn: Date, refreshOn: Date? = nil, now: Date = Date()) {
        self.token = token
        self.expiresOn = expiresOn
        // As the Azure SDKs: five minutes before expiry, or half-way for tokens that live less than ten.
        let lifetime = max(0, expiresOn.timeIntervalSince(now))
        self.refreshOn = refreshOn ?? now.addingTimeInterval(lifetime - min(300, lifetime / 2))
    }
}

extension AccessToken: CustomStringConvertible {
    public var description: String { "AccessToken(***, expiresOn: \(expiresOn))" }
}

/// Something that obtains Entra ID tokens: a client secret, a federated workload identity, a
/// managed identity, or a chain of those.
public protocol TokenCredential: Sendable {
    /// A short name for logs: `clientSecret`, `workloadIdentity`, `managedIdentity`, ...
    var name: String { get }
    /// A new token for `scope` (e.g. `https://webpubsub.azure.com/.default`). Not cached: see ``TokenCache``.
    func getToken(scope: String) async throws(IdentityError) -> AccessToken
}

/// Why no token was obtained.
public struct IdentityError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The credential is not set up here (variables missing, no managed identity endpoint):
        /// a chain goes on to the next one.
        case unavailable
        /// The identity endpoint refused (wrong secret, unknown client, bad assertion).
        case refused
        /// The endpoint could not be reached or kept failing.
        case transport
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// Caches one scope's token and renews it before it expires: while the current token is still
/// good a renewal runs in the background and callers keep using the old one; only one renewal
/// runs at a time, however many callers ask.
public final class TokenCache: Sendable {
    public let credential: any TokenCredential
    public let scope: String
    /// After a failed background renewal, how long to keep using the old token before trying again.
    let retryAfterFailure: TimeInterval

    private struct State {
        var current: AccessToken?
        var renewal: Task<AccessToken, any Error>?
        var failedAt: Date?
    }

    private let state = Mutex(State())

    public init(credential: any TokenCredential, scope: String, retryAfterFailure: TimeInterval = 1) {
        self.credential = credential
        self.scope = scope
        self.retryAfterFailure = retryAfterFailure
    }

    /// A valid token: the cached one, or a new one when there is none still good.
    public func token(now: Date = Date()) async throws(IdentityError) -> String {
        enum Step {
            case use(String)
            case wait(Task<AccessToken, any Error>)
        }
        let step: Step = state.withLock { s in
            if let current = s.current, now < current.refreshOn { return .use(current.token) }
            // Still usable for a while: renew in the background.
            if let current = s.current, now < usableUntil(current) {
                if s.renewal == nil, s.failedAt.map({ now.timeIntervalSince($0) >= retryAfterFailure }) ?? true {
                    s.renewal = renew()
                }
                return .use(current.token)
            }
            if let renewal = s.renewal { return .wait(renewal) }
            let renewal = renew()
            s.renewal = renewal
            return .wait(renewal)
        }
        switch step {
        case .use(let token):
            return token
        case .wait(let task):
            do {
                return try await task.value.token
            } catch let error as IdentityError {
                throw error
            } catch {
                throw IdentityError(.transport, "\(error)")
            }
        }
    }

    /// The last moment a token is handed out: expiry less a margin for the request's trip.
    private func usableUntil(_ token: AccessToken) -> Date {
        let margin = min(30, max(0, token.expiresOn.timeIntervalSince(token.refreshOn)) / 4)
        return token.expiresOn.addingTimeInterval(-margin)
    }

    /// Starts a renewal; called with the lock held. The task records its own outcome.
    private func renew() -> Task<AccessToken, any Error> {
        let credential = credential
        let scope = scope
        return Task {
            do {
                let token = try await credential.getToken(scope: scope)
                state.withLock { s in
                    s.current = token
                    s.renewal = nil
                    s.failedAt = nil
                }
                return token
            } catch {
                state.withLock { s in
                    s.renewal = nil
                    s.failedAt = Date()
                }
                throw error
            }
        }
    }
}
