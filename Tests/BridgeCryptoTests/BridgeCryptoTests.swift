import BridgeCrypto
import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSub

/// BridgeCrypto against published vectors and an independent implementation (PyJWT on the
/// cryptography package).
@Suite struct BridgeCryptoTests {
    static func bytes(hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return result
    }

    /// RFC 4231, section 4: the HMAC-SHA-256 results of test cases 1-4, 6 and 7 (case 5 is a
    /// truncated output).
    @Test(arguments: [
        (
            [UInt8](repeating: 0x0b, count: 20), Array("Hi There".utf8),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        ),
        (
            Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ),
        (
            [UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
        ),
        (
            Array(1...25), [UInt8](repeating: 0xcd, count: 50),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
        ),
        (
            [UInt8](repeating: 0xaa, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        ),
        (
            [UInt8](repeating: 0xaa, count: 131),
            Array(
                "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
                    .utf8),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        ),
    ])
    func hmacSHA256MatchesRFC4231(key: [UInt8], data: [UInt8], expected: String) {
        let code = HMACSHA256.authenticationCode(for: data, key: key)
        #expect(code == Self.bytes(hex: expected))
        #expect(HMACSHA256.isValid(code, for: data, key: key))
        var tampered = code
        tampered[31] ^= 1
        #expect(!HMACSHA256.isValid(tampered, for: data, key: key))
        #expect(!HMACSHA256.isValid(Array(code.prefix(16)), for: data, key: key))
    }

    @Test func hmacWithAnEmptyKeyIsTheEmptyKeysCode() throws {
        // HMAC() reads a NULL key as "no key"; an empty key must still be the empty key.
        #expect(
            HMACSHA256.authenticationCode(for: [], key: []) == Self.bytes(hex: "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"))
        try HMACSHA256.selfTest()
    }

    @Test func constantTimeEqualsComparesEveryByte() {
        #expect(constantTimeEquals([1, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEquals([1, 2, 3], [1, 2, 4]))
        #expect(!constantTimeEquals([1, 2, 3], [0, 2, 3]))
        #expect(!constantTimeEquals([1, 2, 3], [1, 2]))
        #expect(constantTimeEquals([UInt8](), []))
        #expect(constantTimeEquals("sécret", "sécret"))
        #expect(!constantTimeEquals("secret", "secreT"))
    }

    @Test func rs256SignaturesVerifyAndAnyChangeIsRefused() throws {
        let key = try RSAPrivateKey(bits: 2048)
        #expect(key.modulus.count == 256)
        #expect(key.exponent == [0x01, 0x00, 0x01])
        let message = Array("header.payload".utf8)
        let signature = try key.rs256Signature(for: message)
        #expect(signature.count == 256)
        let publicKey = try key.publicKey()
        #expect(publicKey.bitCount == 2048)
        #expect(publicKey.isValidRS256Signature(signature, for: message))
        #expect(!publicKey.isValidRS256Signature(signature, for: Array("header.payloaD".utf8)))
        var flipped = signature
        flipped[100] ^= 0x40
        #expect(!publicKey.isValidRS256Signature(flipped, for: message))
        #expect(!publicKey.isValidRS256Signature(Array(signature.dropLast()), for: message))
        #expect(!publicKey.isValidRS256Signature([], for: message))
        // Another key's signature.
        let other = try RSAPrivateKey(bits: 2048)
        #expect(!publicKey.isValidRS256Signature(try other.rs256Signature(for: message), for: message))
    }

    @Test func weakOrMalformedPublicKeysAreRefusedWithAReason() throws {
        // A 1024-bit modulus (top bit set) with e = 65537.
        let small = [UInt8](repeating: 0xff, count: 128)
        let error = #expect(throws: CryptoError.self) { try RSAPublicKey(modulus: small, exponent: [1, 0, 1]) }
        #expect(error?.description.contains("1024-bit modulus; at least 2048 bits are required") == true, "\(String(describing: error))")
        #expect(throws: CryptoError.self) { try RSAPublicKey(modulus: [], exponent: [1, 0, 1]) }
        #expect(throws: CryptoError.self) { try RSAPublicKey(modulus: [UInt8](repeating: 0xff, count: 256), exponent: []) }
        #expect(throws: CryptoError.self) { try RSAPrivateKey(bits: 1024) }
    }

    /// A JWT signed by PyJWT (RS256 on the cryptography package) verifies here, with the key
    /// given as a JWK's n and e.
    @Test func verifiesATokenSignedByPyJWT() async throws {
        let python = try TestEnvironment.python()
        let result = try await runProcess(python, [TestEnvironment.packageRoot + "/Tests/python/rs256_interop.py", "sign"])
        #expect(result.status == 0, "\(result.stderr)")
        let answer = try JSONValue(parsing: result.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let token = try #require(answer["token"]?.stringValue)
        let n = try #require(answer["n"]?.stringValue.flatMap(AccessKeyJWT.base64URLDecode))
        let e = try #require(answer["e"]?.stringValue.flatMap(AccessKeyJWT.base64URLDecode))
        let key = try RSAPublicKey(modulus: n, exponent: e)
        let parts = token.split(separator: ".")
        try #require(parts.count == 3)
        let signingInput = Array("\(parts[0]).\(parts[1])".utf8)
        let signature = try #require(AccessKeyJWT.base64URLDecode(parts[2]))
        #expect(key.isValidRS256Signature(signature, for: signingInput))
        #expect(!key.isValidRS256Signature(signature, for: signingInput + [0x20]))
        let claims = try JSONValue.parse(try #require(AccessKeyJWT.base64URLDecode(parts[1])))
        #expect(claims["sub"]?.stringValue == "pyjwt")
    }

    /// A JWT signed here verifies in PyJWT; the same token with a changed payload does not.
    @Test func signsATokenPyJWTAccepts() async throws {
        let python = try TestEnvironment.python()
        let key = try RSAPrivateKey(bits: 2048)
        let header = AccessKeyJWT.base64URL(Array(#"{"alg":"RS256","typ":"JWT","kid":"swift-1"}"#.utf8))
        func token(_ payload: String) throws -> String {
            let input = header + "." + AccessKeyJWT.base64URL(Array(payload.utf8))
            return input + "." + AccessKeyJWT.base64URL(try key.rs256Signature(for: Array(input.utf8)))
        }
        let n = AccessKeyJWT.base64URL(key.modulus)
        let e = AccessKeyJWT.base64URL(key.exponent)
        let script = TestEnvironment.packageRoot + "/Tests/python/rs256_interop.py"
        let good = try token(#"{"sub":"bridge","exp":4102444800}"#)
        let accepted = try await runProcess(python, [script, "verify", good, n, e])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        #expect(try JSONValue(parsing: accepted.stdout.trimmingCharacters(in: .whitespacesAndNewlines))["sub"]?.stringValue == "bridge")

        // The signature of one payload on another.
        let goodParts = good.split(separator: ".")
        let forged = goodParts[0] + "." + AccessKeyJWT.base64URL(Array(#"{"sub":"admin","exp":4102444800}"#.utf8)) + "." + goodParts[2]
        let refused = try await runProcess(python, [script, "verify", String(forged), n, e])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("Signature verification failed"), "\(refused.stderr)")
    }
}
