import BridgeJSON
import Foundation
import Testing

@testable import WebPubSub

@Suite struct ConnectionStringTests {
    @Test func parsesServiceFormat() throws {
        let cs = try ConnectionString(parsing: "Endpoint=https://x.webpubsub.azure.com;AccessKey=abc==;Version=1.0;")
        #expect(cs.endpoint == "https://x.webpubsub.azure.com")
        #expect(cs.accessKey.value == "abc==")  // split on the first '=' only
        #expect(cs.version == "1.0")
    }

    @Test func appendsPortAndTrimsSlash() throws {
        let cs = try ConnectionString(parsing: "endpoint=http://localhost/ ; port=8080; accesskey=K")
        #expect(cs.endpoint == "http://localhost:8080")
        #expect(cs.accessKey.value == "K")
    }

    @Test func firstDuplicateWins() throws {
        let cs = try ConnectionString(parsing: "Endpoint=http://a;Endpoint=http://b;AccessKey=K")
        #expect(cs.endpoint == "http://a")
    }

    @Test(arguments: [
        ("AccessKey=K", "'Endpoint' is missing"),
        ("Endpoint=http://a", "'AccessKey' is missing"),
        ("Endpoint=ftp://a;AccessKey=K", "must start with http:// or https://"),
        ("Endpoint=http://a/path;AccessKey=K", "no path"),
        ("Endpoint=http://a;AccessKey=K;Port=99999", "'Port' must be a number"),
        ("Endpoint=http://a:1;AccessKey=K;Port=2", "already has a port"),
        ("Endpoint=http://a;garbage;AccessKey=K", "has no '='"),
        ("Endpoint=https://a;AuthType=aad", "not supported yet"),
    ])
    func rejectsInvalid(text: String, expected: String) {
        #expect {
            try ConnectionString(parsing: text)
        } throws: { error in
            (error as? WebPubSubError)?.message.contains(expected) == true
        }
    }

    /// A malformed string may hold the key anywhere (pasted alone, or with a ';' in it): the
    /// error names the part, never its text.
    @Test(arguments: [
        "s3cr3tKeyMaterial",
        "Endpoint=http://a;AccessKey=abc;s3cr3tKeyMaterial",
        "Endpoint=s3cr3tKeyMaterial;AccessKey=K",
        "Endpoint=http://s3cr3tKeyMaterial/x;AccessKey=K",
        "Endpoint=http://a;AccessKey=K;Port=s3cr3tKeyMaterial",
    ])
    func errorsNeverEchoTheText(text: String) {
        let error = #expect(throws: WebPubSubError.self) { try ConnectionString(parsing: text) }
        #expect(error.map { !"\($0)".contains("s3cr3t") } == true, "\(String(describing: error))")
    }

    @Test func neverPrintsTheKey() throws {
        let cs = try ConnectionString(parsing: "Endpoint=http://a;AccessKey=supersecret")
        #expect(!"\(cs)".contains("supersecret"))
        #expect(!String(reflecting: cs).contains("supersecret"))
        #expect(!"\(cs.accessKey)".contains("supersecret"))
    }
}

@Suite struct JWTTests {
    let key = AccessKey("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH")

    func decode(_ token: String) throws -> (header: JSONValue, payload: JSONValue) {
        let parts = token.split(separator: ".")
        #expect(parts.count == 3)
        return (
            try JSONValue.parse(try #require(AccessKeyJWT.base64URLDecode(parts[0]))),
            try JSONValue.parse(try #require(AccessKeyJWT.base64URLDecode(parts[1])))
        )
    }

    @Test func restTokenClaims() throws {
        let url = "https://x.webpubsub.azure.com/api/hubs/chat/:send?api-version=2024-12-01"
        let token = AccessKeyJWT.restToken(url: url, key: key, expiry: Date(timeIntervalSince1970: 2_000_000_000))
        let (header, payload) = try decode(token)
        #expect(header == .object([("alg", .string("HS256")), ("typ", .string("JWT"))]))
        #expect(payload == .object([("aud", .string(url)), ("exp", .number("2000000000"))]))
        let claims = try AccessKeyJWT.verify(token, keys: [key], now: Date(timeIntervalSince1970: 1_999_999_000)) { $0 == url }
        #expect(claims.audience == url)
    }

    @Test func clientTokenClaims() throws {
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let access = try ClientAccess.make(
            endpoint: "https://X.webpubsub.azure.com", hub: "chat", key: key, userId: "u1", roles: ["webpubsub.joinLeaveGroup"],
            groups: ["g1", "g2"], expiresIn: .seconds(600), now: now)
        #expect(access.baseURL == "wss://x.webpubsub.azure.com/client/hubs/chat")
        #expect(access.url == access.baseURL + "?access_token=" + access.token)
        let (_, payload) = try decode(access.token)
        #expect(payload["aud"] == .string("https://x.webpubsub.azure.com/client/hubs/chat"))
        #expect(payload["iat"] == .number("1700000000"))
        #expect(payload["exp"] == .number("1700000600"))
        #expect(payload["sub"] == .string("u1"))
        #expect(payload["role"] == .array([.string("webpubsub.joinLeaveGroup")]))
        #expect(payload["webpubsub.group"] == .array([.string("g1"), .string("g2")]))
        let claims = try AccessKeyJWT.verify(access.token, keys: [key], now: now)
        #expect(claims.subject == "u1")
        #expect(claims.groups == ["g1", "g2"])
    }

    @Test func verifyRejects() throws {
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let good = AccessKeyJWT.restToken(url: "http://a/api", key: key, expiry: now.addingTimeInterval(60))
        #expect(throws: JWTError.self) { try AccessKeyJWT.verify(good, keys: [AccessKey("other")], now: now) }
        #expect(throws: JWTError.self) { try AccessKeyJWT.verify(good, keys: [key], now: now.addingTimeInterval(3600)) }
        #expect(throws: JWTError.self) { try AccessKeyJWT.verify(good, keys: [key], now: now) { $0 == "http://b/api" } }
        #expect(throws: JWTError.self) { try AccessKeyJWT.verify("a.b", keys: [key], now: now) }
        // A secondary key verifies too.
        _ = try AccessKeyJWT.verify(good, keys: [AccessKey("other"), key], now: now)
        // Tampered payload.
        var parts = good.split(separator: ".").map(String.init)
        parts[1] = AccessKeyJWT.base64URL(Array(#"{"aud":"http://a/api","exp":9999999999}"#.utf8))
        #expect(throws: JWTError.self) { try AccessKeyJWT.verify(parts.joined(separator: "."), keys: [key], now: now) }
    }

    @Test func eventSignature() {
        let keys = [AccessKey("k1"), AccessKey("k2")]
        let header = EventSignature.header(connectionId: "conn", keys: keys)
        #expect(header.split(separator: ",").count == 2)
        #expect(EventSignature.isValid(header, connectionId: "conn", keys: [AccessKey("k2")]))
        #expect(EventSignature.isValid(header.uppercased().replacingOccurrences(of: "SHA256=", with: "sha256="), connectionId: "conn", keys: keys))
        #expect(!EventSignature.isValid(header, connectionId: "other", keys: keys))
        #expect(!EventSignature.isValid("sha256=zz", connectionId: "conn", keys: keys))
    }

    @Test func percentEncoding() {
        #expect(percentEncode("a b/c'é~") == "a%20b%2Fc%27%C3%A9~")
        #expect(percentDecode("a%20b%2Fc%27%C3%A9~") == "a b/c'é~")
        #expect(percentDecode("a+b", plusIsSpace: true) == "a b")
    }
}
