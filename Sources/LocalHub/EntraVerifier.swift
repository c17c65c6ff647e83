import AsyncHTTPClient
import BridgeCrypto
import BridgeJSON
import BridgeObservability
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import WebPubSub

/// Checks Entra ID-style bearer tokens on the REST API: RS256, issued by a trusted issuer
/// (`--trust-issuer`), for the audience `https://webpubsub.azure.com`, not expired. The signing
/// keys come from the issuer's OpenID configuration (`{issuer}/.well-known/openid-configuration`,
/// then its `jwks_uri`), fetched when a token names a key id not seen yet.
final class EntraVerifier: Sendable {
    static let audience = "https://webpubsub.azure.com"

    let issuers: [String]
    let httpClient: HTTPClient
    let logger: Logger
    /// A token with an unknown key id fetches the keys again, at most this often per issuer.
    let refetchInterval: TimeInterval
    /// Keys older than this are fetched again before the next token is checked: a key the
    /// issuer removed (rotated out) stops being trusted within this time.
    let refreshInterval: TimeInterval

    private typealias KeySet = [String: RSAPublicKey]

    private struct Keys {
        var byId: KeySet = [:]
        var fetchedAt: Date?
        /// The fetch in flight: concurrent tokens with an unknown key id wait for this one.
        var fetching: Task<KeySet, any Error>?
    }

    private let keys = Mutex<[String: Keys]>([:])

    init(issuers: [String], httpClient: HTTPClient, logger: Logger, refetchInterval: TimeInterval = 5, refreshInterval: TimeInterval = 3600) {
        self.issuers = issuers.map(Self.normalize)
        self.httpClient = httpClient
        self.logger = logger
        self.refetchInterval = refetchInterval
        self.refreshInterval = max(refreshInterval, refetchInterval)
    }

    static func normalize(_ issuer: String) -> String {
        var s = issuer
        while s.hasSuffix("/") { s.removeLast() }
        return s
    }

    /// Whether `token` is an RS256 JWT (rather than an access-key HS256 one).
    static func isRS256(_ token: String) -> Bool {
        guard let first = token.split(separator: ".", maxSplits: 1).first, let bytes = AccessKeyJWT.base64URLDecode(first),
            let header = try? JSONValue.parse(bytes)
        else { return false }
        return header["alg"] == .string("RS256")
    }

    /// The token's claims when it is valid.
    func verify(_ token: String, now: Date = Date(), leeway: TimeInterval = 60) async throws(JWTError) -> JWTClaims {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = AccessKeyJWT.base64URLDecode(parts[0]), let header = try? JSONValue.parse(headerBytes),
            let payloadBytes = AccessKeyJWT.base64URLDecode(parts[1]), let payload = try? JSONValue.parse(payloadBytes), case .object = payload,
            let signature = AccessKeyJWT.base64URLDecode(parts[2])
        else { throw JWTError("malformed token") }
        guard header["alg"] == .string("RS256") else { throw JWTError("unsupported algorithm; expected RS256") }
        let claims = JWTClaims(payload)
        guard let iss = payload["iss"]?.stringValue else { throw JWTError("token has no 'iss' claim") }
        let issuer = Self.normalize(iss)
        guard issuers.contains(issuer) else { throw JWTError("issuer '\(iss)' is not trusted (start the hub with --trust-issuer \(iss))") }
        let kid = header["kid"]?.stringValue
        let key = try await key(issuer: issuer, kid: kid, now: now)
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        guard key.isValidRS256Signature(signature, for: signingInput) else {
            throw JWTError("invalid signature")
        }
        guard let exp = claims.expiry else { throw JWTError("token has no 'exp' claim") }
        guard exp.timeIntervalSince(now) > -leeway else { throw JWTError("token expired at \(exp)") }
        if let nbf = claims.notBefore, nbf.timeIntervalSince(now) > leeway { throw JWTError("token not valid before \(nbf)") }
        let audiences = claims.strings("aud").map(Self.normalize)
        guard audiences.contains(Self.audience) else {
            throw JWTError("token audience '\(audiences.joined(separator: ","))' is not \(Self.audience)")
        }
        return claims
    }

    private func key(issuer: String, kid: String?, now: Date) async throws(JWTError) -> RSAPublicKey {
        func lookup() -> RSAPublicKey? {
            keys.withLock { all in
                guard let known = all[issuer] else { return nil }
                if let kid { return known.byId[kid] }
                return known.byId.count == 1 ? known.byId.values.first : nil
            }
        }
        let stale = keys.withLock { all in all[issuer]?.fetchedAt.map { now.timeIntervalSince($0) >= refreshInterval } ?? true }
        let cached = lookup()
        if let cached, !stale { return cached }
        // One fetch at a time per issuer, and at most one per refetchInterval: tokens naming
        // unknown key ids cannot make the hub hammer the issuer. A stale set is fetched again
        // (the new set replaces it: removed keys are gone); while the issuer cannot be reached
        // the keys it last published stay in use.
        let fetch: Task<KeySet, any Error>? = keys.withLock { all in
            var entry = all[issuer, default: Keys()]
            defer { all[issuer] = entry }
            if let running = entry.fetching { return running }
            if let at = entry.fetchedAt, now.timeIntervalSince(at) < refetchInterval { return nil }
            entry.fetchedAt = now
            let task = Task { [self] in try await fetchKeys(issuer: issuer) }
            entry.fetching = task
            return task
        }
        guard let fetch else {
            if let cached { return cached }
            throw JWTError("no signing key '\(kid ?? "-")' at issuer \(issuer)")
        }
        do {
            let fetched = try await fetch.value
            keys.withLock { all in
                if all[issuer]?.fetching == fetch {
                    all[issuer]?.byId = fetched
                    all[issuer]?.fetching = nil
                }
            }
        } catch {
            let first = keys.withLock { all in
                defer { if all[issuer]?.fetching == fetch { all[issuer]?.fetching = nil } }
                return all[issuer]?.fetching == fetch
            }
            if first {
                logger.warning("cannot fetch the signing keys of a trusted issuer", metadata: [LogKey.issuer: "\(issuer)", LogKey.error: "\(error)"])
            }
            if let cached { return cached }
            throw JWTError("cannot fetch the signing keys of \(issuer): \(error)")
        }
        guard let key = lookup() else { throw JWTError("no signing key '\(kid ?? "-")' at issuer \(issuer)") }
        return key
    }

    struct FetchError: Error, CustomStringConvertible {
        let description: String
    }

    private func getJSON(_ url: String) async throws -> JSONValue {
        let response = try await httpClient.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 1024 * 1024)
        guard response.status == .ok else { throw FetchError(description: "\(url): HTTP \(response.status.code)") }
        guard let json = try? JSONValue.parse(Array(body.readableBytesView)) else { throw FetchError(description: "\(url): not JSON") }
        return json
    }

    private func fetchKeys(issuer: String) async throws -> [String: RSAPublicKey] {
        let discovery = try await getJSON(issuer + "/.well-known/openid-configuration")
        guard let jwksURI = discovery["jwks_uri"]?.stringValue else { throw FetchError(description: "the OpenID configuration has no jwks_uri") }
        guard case .array(let items) = try await getJSON(jwksURI)["keys"] ?? .null else { throw FetchError(description: "\(jwksURI) has no keys") }
        var result: [String: RSAPublicKey] = [:]
        for (index, item) in items.enumerated() {
            guard item["kty"]?.stringValue == "RSA", let n = item["n"]?.stringValue.flatMap(AccessKeyJWT.base64URLDecode),
                let e = item["e"]?.stringValue.flatMap(AccessKeyJWT.base64URLDecode)
            else { continue }
            if let use = item["use"]?.stringValue, use != "sig" { continue }
            do {
                result[item["kid"]?.stringValue ?? "#\(index)"] = try RSAPublicKey(modulus: n, exponent: e)
            } catch {
                logger.warning("skipping an RSA key the issuer publishes", metadata: [LogKey.issuer: "\(issuer)", LogKey.error: "\(error)"])
            }
        }
        return result
    }
}
