import BridgeCrypto
package import BridgeJSON
package import Foundation

/// HS256 JSON Web Tokens signed with a Web PubSub access key (its UTF-8 bytes, not base64-decoded),
/// as the service and its SDKs use for REST calls and client connections.
package enum AccessKeyJWT {
    /// Signs `claims` (written in the given order) with `key`.
    package static func sign(claims: [(String, JSONValue)], key: AccessKey) -> String {
        let header = #"{"alg":"HS256","typ":"JWT"}"#
        let payload = JSONValue.object(claims).serialized
        let signingInput = base64URL(Array(header.utf8)) + "." + base64URL(Array(payload.utf8))
        let mac = HMACSHA256.authenticationCode(for: Array(signingInput.utf8), key: Array(key.value.utf8))
        return signingInput + "." + base64URL(mac)
    }

    /// The claims of a token for a REST request to `url` (the full URL, query included, as the
    /// SDKs sign it), valid until `expiry`.
    package static func restToken(url: String, key: AccessKey, expiry: Date) -> String {
        sign(claims: [("aud", .string(url)), ("exp", .number(String(Int(expiry.timeIntervalSince1970))))], key: key)
    }

    /// Verifies signature, expiry and (when given) audience; returns the claims.
    /// - Parameters:
    ///   - keys: the primary and secondary keys; a token signed with either is valid.
    ///   - audience: checked by `audienceMatches` when given.
    ///   - leeway: clock skew allowed on `exp` and `nbf`.
    /// - Throws: ``JWTError`` naming what is wrong.
    package static func verify(
        _ token: String, keys: [AccessKey], now: Date = Date(), leeway: TimeInterval = 60,
        audienceMatches: ((String) -> Bool)? = nil
    ) throws(JWTError) -> JWTClaims {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw JWTError("malformed token: expected three dot-separated parts") }
        guard let headerBytes = base64URLDecode(parts[0]), let header = try? JSONValue.parse(headerBytes) else {
            throw JWTError("malformed token header")
        }
        guard header["alg"] == .string("HS256") else {
            throw JWTError("unsupported algorithm \(header["alg"]?.serialized ?? "none"); expected HS256")
        }
        guard let signature = base64URLDecode(parts[2]) else { throw JWTError("malformed token signature") }
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        let valid = keys.contains { key in HMACSHA256.isValid(signature, for: signingInput, key: Array(key.value.utf8)) }
        guard valid else { throw JWTError("invalid signature") }
        guard let payloadBytes = base64URLDecode(parts[1]), let payload = try? JSONValue.parse(payloadBytes),
            case .object = payload
        else { throw JWTError("malformed token payload") }
        let claims = JWTClaims(payload)
        guard let exp = claims.expiry else { throw JWTError("token has no 'exp' claim") }
        guard exp.timeIntervalSince(now) > -leeway else { throw JWTError("token expired at \(exp)") }
        if let nbf = claims.notBefore, nbf.timeIntervalSince(now) > leeway { throw JWTError("token not valid before \(nbf)") }
        if let audienceMatches {
            guard let aud = claims.audience else { throw JWTError("token has no 'aud' claim") }
            guard audienceMatches(aud) else { throw JWTError("token audience '\(aud)' does not match this request") }
        }
        return claims
    }

    package static func base64URL(_ bytes: [UInt8]) -> String {
        var s = Data(bytes).base64EncodedString()
        s = s.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        while s.hasSuffix("=") { s.removeLast() }
        return s
    }

    package static func base64URLDecode(_ text: some StringProtocol) -> [UInt8]? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s).map { Array($0) }
    }
}

/// The claims of a verified token.
package struct JWTClaims: Sendable {
    package let payload: JSONValue

    package init(_ payload: JSONValue) { self.payload = payload }

    func date(_ name: String) -> Date? {
        guard case .number(let n) = payload[name], let seconds = Double(n) else { return nil }
        return Date(timeIntervalSince1970: seconds)
    }

    package var audience: String? {
        switch payload["aud"] {
        case .string(let s): s
        case .array(let items): items.first?.stringValue
        default: nil
        }
    }

    package var expiry: Date? { date("exp") }
    package var notBefore: Date? { date("nbf") }
    package var issuedAt: Date? { date("iat") }
    package var subject: String? { payload["sub"]?.stringValue }

    /// A claim that may be a string or a list of strings (`role`, `webpubsub.group`).
    package func strings(_ name: String) -> [String] {
        switch payload[name] {
        case .string(let s): [s]
        case .array(let items): items.compactMap(\.stringValue)
        default: []
        }
    }

    package var roles: [String] { strings("role") }
    package var groups: [String] { strings("webpubsub.group") }
}

package struct JWTError: Error, Sendable, CustomStringConvertible {
    package let message: String
    package init(_ message: String) { self.message = message }
    package var description: String { message }
}
