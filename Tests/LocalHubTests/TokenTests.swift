import AsyncHTTPClient
import BridgeCrypto
import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import NIOCore
import Testing
import WebPubSub

/// Tokens a hostile client or a confused configuration sends, against the REST API and the
/// client endpoint; and Entra ID signing keys as an issuer rotates them.
@Suite struct TokenTests {
    static let key = AccessKey("hub-test-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")

    static func token(header: String, claims: [(String, JSONValue)], hmacKey: [UInt8]? = Array(key.value.utf8)) -> String {
        let input = AccessKeyJWT.base64URL(Array(header.utf8)) + "." + AccessKeyJWT.base64URL(Array(JSONValue.object(claims).serialized.utf8))
        let signature = hmacKey.map { AccessKeyJWT.base64URL(HMACSHA256.authenticationCode(for: Array(input.utf8), key: $0)) } ?? ""
        return input + "." + signature
    }

    static func post(_ endpoint: String, path: String = "/api/hubs/chat/:send", token: String) async throws -> (Int, String) {
        try await postToHub(endpoint, path: path, token: token)
    }

    /// Each bad token next to the good one it was made from: the only difference is what is tested.
    static func badTokens(audience: String) -> [(String, String)] {
        let now = Int(Date().timeIntervalSince1970)
        let exp: (String, JSONValue) = ("exp", .number(String(now + 600)))
        let aud: (String, JSONValue) = ("aud", .string(audience))
        return [
            ("alg none", token(header: #"{"alg":"none","typ":"JWT"}"#, claims: [aud, exp], hmacKey: nil)),
            ("alg none, signed", token(header: #"{"alg":"none","typ":"JWT"}"#, claims: [aud, exp])),
            ("RS256 signed with the access key as an HMAC secret", token(header: #"{"alg":"RS256","typ":"JWT"}"#, claims: [aud, exp])),
            ("HS512", token(header: #"{"alg":"HS512","typ":"JWT"}"#, claims: [aud, exp])),
            ("no exp", token(header: #"{"alg":"HS256","typ":"JWT"}"#, claims: [aud])),
            ("nbf in an hour", token(header: #"{"alg":"HS256","typ":"JWT"}"#, claims: [aud, exp, ("nbf", .number(String(now + 3600)))])),
            ("expired", token(header: #"{"alg":"HS256","typ":"JWT"}"#, claims: [aud, ("exp", .number(String(now - 3600)))])),
            ("another key", token(header: #"{"alg":"HS256","typ":"JWT"}"#, claims: [aud, exp], hmacKey: Array("another-key".utf8))),
        ]
    }

    @Test func theRESTAPIRefusesBadTokens() async throws {
        try await withHub { _, cs in
            let url = cs.endpoint + "/api/hubs/chat/:send?api-version=2024-12-01"
            let good = Self.token(
                header: #"{"alg":"HS256","typ":"JWT"}"#,
                claims: [("aud", .string(url)), ("exp", .number(String(Int(Date().timeIntervalSince1970) + 600)))])
            #expect(try await Self.post(cs.endpoint, token: good).0 == 202, "the control token is accepted")
            for (what, token) in Self.badTokens(audience: url) {
                let (status, body) = try await Self.post(cs.endpoint, token: token)
                #expect(status == 401, "\(what): \(status) \(body)")
            }
            // A token for one path does not open another: a send to the whole hub with a token
            // for one group's send, and for another hub.
            for other in ["/api/hubs/chat/groups/g/:send", "/api/hubs/other/:send"] {
                let scoped = Self.token(
                    header: #"{"alg":"HS256","typ":"JWT"}"#,
                    claims: [
                        ("aud", .string(cs.endpoint + other + "?api-version=2024-12-01")),
                        ("exp", .number(String(Int(Date().timeIntervalSince1970) + 600))),
                    ])
                let (status, body) = try await Self.post(cs.endpoint, token: scoped)
                #expect(status == 401 && body.contains("audience"), "\(other): \(status) \(body)")
            }
        }
    }

    @Test func theClientEndpointRefusesBadTokens() async throws {
        try await withHub { _, cs in
            let audience = cs.endpoint.lowercased() + "/client/hubs/chat"
            let base = cs.endpoint.replacingOccurrences(of: "http://", with: "ws://") + "/client/hubs/chat?access_token="
            let good = Self.token(
                header: #"{"alg":"HS256","typ":"JWT"}"#,
                claims: [("aud", .string(audience)), ("exp", .number(String(Int(Date().timeIntervalSince1970) + 600)))])
            let socket = try await TestWebSocket.connect(base + good, subprotocol: "json.webpubsub.azure.v1")
            #expect(await socket.expect(type: "system", event: "connected") != nil, "the control token connects")
            for (what, token) in Self.badTokens(audience: audience) {
                do {
                    _ = try await TestWebSocket.connect(base + token, subprotocol: "json.webpubsub.azure.v1")
                    Issue.record("\(what): connected")
                } catch {
                    // Refused at the upgrade (the control token above connected: the hub is there).
                    #expect("\(error)".contains("upgrade failed"), "\(what): \(error)")
                }
            }
        }
    }

    func withEntraHub(_ idp: TestIdentityProvider, refresh: Duration = .seconds(3600), _ body: (ConnectionString) async throws -> Void) async throws {
        try await withHub({
            $0.trustedIssuers = [idp.issuer]
            $0.signingKeyRefresh = refresh
        }) { _, cs in try await body(cs) }
    }

    /// A token naming a new key id fetches the keys at once; the keys fetched replace the old
    /// ones, so a key the issuer removed is no longer trusted.
    @Test func aRotatedOutKeyIsNoLongerTrusted() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        try await withEntraHub(idp) { cs in
            let old = idp.mint(expiresIn: .seconds(600))
            #expect(try await Self.post(cs.endpoint, token: old).0 == 202)
            try idp.rotateKeys()
            // Unknown key ids fetch the keys at most every 5 s (the first token fetched them).
            try await Task.sleep(for: .seconds(5.5))
            let new = idp.mint(expiresIn: .seconds(600))
            #expect(try await Self.post(cs.endpoint, token: new).0 == 202, "a new key id is fetched")
            let (status, body) = try await Self.post(cs.endpoint, token: old)
            #expect(status == 401 && body.contains("no signing key"), "\(status) \(body)")
        }
        await idp.stop()
    }

    /// Without any token naming a new key, the keys are fetched again on schedule: the removed
    /// key stops being trusted within the refresh time.
    @Test func keysAreRefreshedOnSchedule() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        try await withEntraHub(idp, refresh: .seconds(1)) { cs in
            let old = idp.mint(expiresIn: .seconds(600))
            #expect(try await Self.post(cs.endpoint, token: old).0 == 202)
            try idp.rotateKeys()
            #expect(try await Self.post(cs.endpoint, token: old).0 == 202, "still trusted until the refresh")
            // The refresh time is at least the 5 s between fetches.
            try await Task.sleep(for: .seconds(6))
            let (status, body) = try await Self.post(cs.endpoint, token: old)
            #expect(status == 401, "\(status) \(body)")
        }
        await idp.stop()
    }

    /// Tokens naming unknown key ids cannot make the hub hammer the issuer.
    @Test func unknownKeyIdsAreFetchedAtMostEvery5Seconds() async throws {
        let idp = try TestIdentityProvider()
        try await idp.start()
        try await withEntraHub(idp) { cs in
            let good = idp.mint(expiresIn: .seconds(600))
            let accepted = try await Self.post(cs.endpoint, token: good)
            #expect(accepted.0 == 202)
            let before = idp.served.filter { $0.kind == "jwks" }.count
            for i in 0..<30 {
                let unknown = idp.mint(expiresIn: .seconds(600), keyId: "unknown-\(i)")
                let refused = try await Self.post(cs.endpoint, token: unknown)
                #expect(refused.0 == 401)
            }
            let fetches = idp.served.filter { $0.kind == "jwks" }.count - before
            #expect(fetches <= 2, "\(fetches) JWKS fetches for 30 tokens with unknown key ids")
        }
        await idp.stop()
    }
}
