package import Foundation
import Synchronization

/// An Entra ID access token and when to stop using it.
package struct AccessToken: Sendable {
    /// The bearer token. Never logged: `description` is redacted.
    package var token: String
    package var expiresOn: Date
    /// When to get a new one (the identity endpoint's `refresh_in`, or a share of the lifetime).
    package var refreshOn: Date
    /// The last moment it is handed out: expiry less a margin for the request's trip.
    package var usableUntil: Date

    package init(token: String, expiresOn: Date, refreshOn: Date? = nil, now: Date = Date()) {
        self.token = token
        self.expiresOn = expiresOn
        let lifetime = max(0, expiresOn.timeIntervalSince(now))
        usableUntil = expiresOn.addingTimeInterval(-min(30, lifetime / 8))
        // As the Azure SDKs: five minutes before expiry, or half-way for tokens that live less
        // than ten; never later than the token is usable.
        self.refreshOn = min(refreshOn ?? now.addingTimeInterval(lifetime - min(300, lifetime / 2)), usableUntil)
    }
}

extension AccessToken: CustomStringConvertible {
    package var description: String { "AccessToken(***, expiresOn: \(expiresOn))" }
}

/// Something that obtains Entra ID tokens: a client secret, a federated workload identity, a
/// managed identity, or a chain of those.
package protocol TokenCredential: Sendable {
    /// A short name for logs: `clientSecret`, `workloadIdentity`, `managedIdentity`, ...
    var name: String { get }
    /// A new token for `scope` (e.g. `https://webpubsub.azure.com/.default`). Not cached: see ``TokenCache``.
    func getToken(scope: String) async throws(IdentityError) -> AccessToken
}

/// Why no token was obtained.
package struct IdentityError: Error, Sendable, CustomStringConvertible {
    package enum Kind: Sendable, Equatable {
        /// The credential is not set up here (variables missing, no managed identity endpoint):
        /// a chain goes on to the next one.
        case unavailable
        /// The identity endpoint refused (wrong secret, unknown client, bad assertion).
        case refused
        /// The endpoint could not be reached or kept failing.
        case transport
        /// The caller was cancelled while it waited.
        case cancelled
    }

    package let kind: Kind
    package let message: String

    package init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    package var description: String { message }
}

/// Caches one scope's token and renews it before it expires: while the current token is still
/// good a renewal runs in the background and callers keep using the old one; only one renewal
/// runs at a time, however many callers wait for it. A caller that is cancelled stops waiting
/// (the renewal goes on for the others).
package final class TokenCache: Sendable {
    package let credential: any TokenCredential
    package let scope: String
    /// After a failed background renewal, how long to keep using the old token before trying
    /// again: this, or half the time the old token has left, whichever is shorter.
    let retryAfterFailure: TimeInterval

    private typealias Waiter = CheckedContinuation<String, any Error>

    private struct State {
        var current: AccessToken?
        var renewing = false
        /// When the renewal in flight (or the last one) started, by the callers' clock.
        var renewalStarted: Date?
        var failedAt: Date?
        var waiters: [Int: Waiter] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    package init(credential: any TokenCredential, scope: String, retryAfterFailure: TimeInterval = 30) {
        self.credential = credential
        self.scope = scope
        self.retryAfterFailure = retryAfterFailure
    }

    /// A valid token: the cached one, or a new one when there is none still good.
    package func token(now: Date = Date()) async throws(IdentityError) -> String {
        let cached: String? = state.withLock { s in
            guard let current = s.current, now < current.usableUntil else { return nil }
            if now >= current.refreshOn, !s.renewing {
                let pause = min(retryAfterFailure, max(1, current.usableUntil.timeIntervalSince(now) / 2))
                if s.failedAt.map({ now.timeIntervalSince($0) >= pause }) ?? true { startRenewal(&s, now: now) }
            }
            return current.token
        }
        if let cached { return cached }
        let id = state.withLock { s in
            defer { s.nextWaiter += 1 }
            return s.nextWaiter
        }
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (waiter: Waiter) in
                    let ready: Result<String, any Error>? = state.withLock { s in
                        // A renewal may have finished since the first look.
                        if let current = s.current, Date() < current.usableUntil { return .success(current.token) }
                        if Task.isCancelled { return .failure(CancellationError()) }
                        s.waiters[id] = waiter
                        if !s.renewing { startRenewal(&s, now: now) }
                        return nil
                    }
                    if let ready { waiter.resume(with: ready) }
                }
            } onCancel: {
                state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
            }
        } catch let error as IdentityError {
            throw error
        } catch is CancellationError {
            throw IdentityError(.cancelled, "cancelled while waiting for an Entra ID token")
        } catch {
            throw IdentityError(.transport, "\(error)")
        }
    }

    /// Starts the renewal; called with the lock held. It hands its outcome to every waiter.
    private func startRenewal(_ s: inout State, now: Date) {
        s.renewing = true
        s.renewalStarted = now
        let credential = credential
        let scope = scope
        Task {
            let outcome: Result<AccessToken, IdentityError>
            do throws(IdentityError) {
                outcome = .success(try await credential.getToken(scope: scope))
            } catch {
                outcome = .failure(error)
            }
            let waiters = state.withLock { s in
                s.renewing = false
                switch outcome {
                case .success(let token):
                    s.current = token
                    s.failedAt = nil
                case .failure:
                    s.failedAt = s.renewalStarted
                }
                defer { s.waiters.removeAll() }
                return Array(s.waiters.values)
            }
            for waiter in waiters { waiter.resume(with: outcome.map(\.token).mapError { $0 as any Error }) }
        }
    }
}
