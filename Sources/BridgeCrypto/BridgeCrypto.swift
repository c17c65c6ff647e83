import CLibCrypto

// The few cryptographic operations wps-bridge needs, on the system's OpenSSL 3 libcrypto (the
// library librdkafka loads anyway): HMAC-SHA256 for access-key JWTs and `ce-signature`,
// constant-time comparison of secrets, RS256 (RSASSA-PKCS1-v1_5 with SHA-256) verification for
// Entra ID tokens, and RS256 signing for the test identity provider.

/// What OpenSSL refused, with its own reasons.
package struct CryptoError: Error, Sendable, CustomStringConvertible {
    /// The operation that failed, e.g. "RSA public key from modulus and exponent".
    package let operation: String
    /// OpenSSL's error queue, oldest first (`error:02000079:rsa routines::...`).
    package let reasons: [String]

    package init(_ operation: String, reasons: [String] = []) {
        self.operation = operation
        self.reasons = reasons
    }

    /// The failure of `operation`, with whatever OpenSSL queued on this thread.
    static func openSSL(_ operation: String) -> CryptoError {
        CryptoError(operation, reasons: drainErrors())
    }

    package var description: String {
        reasons.isEmpty ? "\(operation) failed" : "\(operation) failed: \(reasons.joined(separator: "; "))"
    }
}

/// Empties this thread's OpenSSL error queue, returning its entries as text.
private func drainErrors() -> [String] {
    var reasons: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return reasons
}

/// OpenSSL's version, e.g. "OpenSSL 3.0.19 27 Jan 2026".
package var openSSLVersion: String { String(cString: OpenSSL_version(OPENSSL_VERSION)) }

// MARK: - HMAC-SHA256

/// HMAC with SHA-256 (RFC 2104).
package enum HMACSHA256 {
    /// The length of a code in bytes.
    package static let byteCount = 32

    /// The code of `message` under `key`.
    ///
    /// SHA-256 HMAC cannot fail on a working libcrypto; a library that cannot compute it (a
    /// broken install or a provider configuration without SHA-256) stops the process with
    /// OpenSSL's reason. `wps-bridge` runs ``selfTest()`` at start, so that shows at once.
    package static func authenticationCode(for message: [UInt8], key: [UInt8]) -> [UInt8] {
        do {
            return try compute(message, key: key)
        } catch {
            fatalError("libcrypto cannot compute HMAC-SHA256: \(error)")
        }
    }

    /// Whether `code` is the code of `message` under `key`, compared in constant time.
    package static func isValid(_ code: [UInt8], for message: [UInt8], key: [UInt8]) -> Bool {
        constantTimeEquals(code, authenticationCode(for: message, key: key))
    }

    static func compute(_ message: [UInt8], key: [UInt8]) throws(CryptoError) -> [UInt8] {
        ERR_clear_error()
        var code = [UInt8](repeating: 0, count: byteCount)
        var length: UInt32 = 0
        // A zero-length key still needs a valid pointer: HMAC() reads a NULL key as "no key given".
        let keyBytes = key.isEmpty ? [0] : key
        let result = keyBytes.withUnsafeBytes { k in
            message.withUnsafeBytes { m in
                code.withUnsafeMutableBytes { out in
                    HMAC(
                        EVP_sha256(), k.baseAddress, Int32(key.count), m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count,
                        out.baseAddress?.assumingMemoryBound(to: UInt8.self), &length)
                }
            }
        }
        guard result != nil, length == byteCount else { throw .openSSL("HMAC-SHA256") }
        return code
    }

    /// Computes the RFC 4231 test case 2 vector and checks the answer; throws OpenSSL's reason
    /// when libcrypto cannot do it. Run once at start.
    package static func selfTest() throws(CryptoError) {
        let code = try compute(Array("what do ya want for nothing?".utf8), key: Array("Jefe".utf8))
        let expected: [UInt8] = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
            0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43,
        ]
        guard code == expected else { throw CryptoError("HMAC-SHA256 self-test (RFC 4231 case 2)", reasons: ["wrong result"]) }
    }
}

// MARK: - Constant-time comparison

/// Whether `a` and `b` hold the same bytes, compared without an early exit (`CRYPTO_memcmp`), so
/// that timing does not tell how much of a secret matched. Only the length may show.
package func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    guard !a.isEmpty else { return true }
    return a.withUnsafeBytes { x in b.withUnsafeBytes { y in CRYPTO_memcmp(x.baseAddress, y.baseAddress, x.count) } } == 0
}

/// Compares two secrets' UTF-8 bytes in constant time (for the same length).
package func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    constantTimeEquals(Array(a.utf8), Array(b.utf8))
}

// MARK: - RSA

/// An RSA public key for RS256 (RSASSA-PKCS1-v1_5 with SHA-256) verification, as JWKs publish it.
///
/// An `EVP_PKEY` may be used by several threads at once for verification (each verification has
/// its own `EVP_MD_CTX`), and this type never changes it after creation.
package final class RSAPublicKey: @unchecked Sendable {
    /// Keys below this size are refused, as swift-crypto and Entra ID do.
    package static let minimumBits = 2048

    let pkey: OpaquePointer

    /// The key with modulus `n` and public exponent `e`, both big-endian unsigned (a JWK's
    /// base64url-decoded `n` and `e`).
    package init(modulus: [UInt8], exponent: [UInt8]) throws(CryptoError) {
        ERR_clear_error()
        guard !modulus.isEmpty, !exponent.isEmpty else { throw CryptoError("RSA public key", reasons: ["empty modulus or exponent"]) }
        guard let n = BN_bin2bn(modulus, Int32(modulus.count), nil) else { throw .openSSL("RSA modulus") }
        defer { BN_free(n) }
        guard let e = BN_bin2bn(exponent, Int32(exponent.count), nil) else { throw .openSSL("RSA exponent") }
        defer { BN_free(e) }
        guard let builder = OSSL_PARAM_BLD_new() else { throw .openSSL("RSA parameters") }
        defer { OSSL_PARAM_BLD_free(builder) }
        guard OSSL_PARAM_BLD_push_BN(builder, wps_param_rsa_n(), n) == 1,
            OSSL_PARAM_BLD_push_BN(builder, wps_param_rsa_e(), e) == 1,
            let params = OSSL_PARAM_BLD_to_param(builder)
        else { throw .openSSL("RSA parameters") }
        defer { OSSL_PARAM_free(params) }
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else { throw .openSSL("RSA key context") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_fromdata_init(context) == 1, EVP_PKEY_fromdata(context, &key, wps_evp_pkey_public_key(), params) == 1, let key else {
            throw .openSSL("RSA public key from modulus and exponent")
        }
        let bits = Int(EVP_PKEY_get_bits(key))
        guard bits >= Self.minimumBits else {
            EVP_PKEY_free(key)
            throw CryptoError("RSA public key", reasons: ["\(bits)-bit modulus; at least \(Self.minimumBits) bits are required"])
        }
        pkey = key
    }

    init(owning pkey: OpaquePointer) { self.pkey = pkey }

    deinit { EVP_PKEY_free(pkey) }

    /// The modulus size in bits.
    package var bitCount: Int { Int(EVP_PKEY_get_bits(pkey)) }

    /// Whether `signature` is an RS256 signature of `message` by this key's private half.
    package func isValidRS256Signature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
        ERR_clear_error()
        defer { ERR_clear_error() }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, pkey) == 1 else { return false }
        return signature.withUnsafeBufferPointer { s in
            message.withUnsafeBufferPointer { m in
                EVP_DigestVerify(context, s.baseAddress, s.count, m.baseAddress, m.count)
            }
        } == 1
    }
}

/// An RSA private key that makes RS256 signatures: the test identity provider's signing key.
package final class RSAPrivateKey: @unchecked Sendable {
    let pkey: OpaquePointer

    /// A new random key of `bits` bits (at least ``RSAPublicKey/minimumBits``), exponent 65537.
    package init(bits: Int = 2048) throws(CryptoError) {
        guard bits >= RSAPublicKey.minimumBits else {
            throw CryptoError("RSA key generation", reasons: ["at least \(RSAPublicKey.minimumBits) bits are required"])
        }
        ERR_clear_error()
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else { throw .openSSL("RSA key context") }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_rsa_keygen_bits(context, Int32(bits)) == 1,
            EVP_PKEY_generate(context, &key) == 1, let key
        else { throw .openSSL("RSA key generation") }
        pkey = key
    }

    deinit { EVP_PKEY_free(pkey) }

    /// The modulus, big-endian unsigned (a JWK's `n` before base64url).
    package var modulus: [UInt8] { bigNumber(wps_param_rsa_n()) }
    /// The public exponent, big-endian unsigned (a JWK's `e` before base64url).
    package var exponent: [UInt8] { bigNumber(wps_param_rsa_e()) }

    /// The public half.
    package func publicKey() throws(CryptoError) -> RSAPublicKey {
        try RSAPublicKey(modulus: modulus, exponent: exponent)
    }

    /// The RS256 signature of `message`.
    package func rs256Signature(for message: [UInt8]) throws(CryptoError) -> [UInt8] {
        ERR_clear_error()
        guard let context = EVP_MD_CTX_new() else { throw .openSSL("RS256 signature") }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, pkey) == 1 else { throw .openSSL("RS256 signature") }
        var length = 0
        guard message.withUnsafeBufferPointer({ EVP_DigestSign(context, nil, &length, $0.baseAddress, $0.count) }) == 1 else {
            throw .openSSL("RS256 signature")
        }
        var signature = [UInt8](repeating: 0, count: length)
        let signed = signature.withUnsafeMutableBufferPointer { s in
            message.withUnsafeBufferPointer { m in EVP_DigestSign(context, s.baseAddress, &length, m.baseAddress, m.count) }
        }
        guard signed == 1 else { throw .openSSL("RS256 signature") }
        return Array(signature.prefix(length))
    }

    private func bigNumber(_ name: UnsafePointer<CChar>) -> [UInt8] {
        var value: OpaquePointer?
        guard EVP_PKEY_get_bn_param(pkey, name, &value) == 1, let value else { return [] }
        defer { BN_free(value) }
        var bytes = [UInt8](repeating: 0, count: (Int(BN_num_bits(value)) + 7) / 8)
        _ = BN_bn2bin(value, &bytes)
        return bytes
    }
}
