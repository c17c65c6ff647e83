import BridgeCrypto
import BridgeJSON
package import Foundation
package import WebPubSubProtocol

/// What a browser needs to connect: `wss://host/client/hubs/{hub}?access_token=...`.
package struct ClientAccess: Sendable, Equatable {
    /// `ws(s)://host[:port]/client/hubs/{hub}`
    package let baseURL: String
    package let token: String
    /// `baseURL?access_token=token`
    package let url: String

    /// Signs a client token locally, with the claims the official SDKs write: `aud`
    /// (`{endpoint}/client/hubs/{hub}`, endpoint lower-cased; `/clients/mqtt/hubs/` and
    /// `/clients/socketio/hubs/` for those clients), `iat`, `exp`, and `sub`, `role`,
    /// `webpubsub.group` when given.
    package static func make(
        endpoint: String, hub: String, key: AccessKey, userId: String?, roles: [String], groups: [String], expiresIn: Duration,
        clientType: ClientType = .default, now: Date = Date()
    ) throws(WebPubSubError) -> ClientAccess {
        if let problem = WebPubSubNames.hubProblem(hub) { throw .invalidArgument(problem) }
        guard expiresIn > .zero, expiresIn <= .seconds(10 * 365 * 24 * 3600) else {
            throw .invalidArgument("token lifetime must be positive and at most 10 years")
        }
        let lower = endpoint.lowercased()
        let audience = lower + clientType.hubsPath + hub
        let issued = Int(now.timeIntervalSince1970)
        var claims: [(String, JSONValue)] = [
            ("aud", .string(audience)),
            ("iat", .number(String(issued))),
            ("exp", .number(String(issued + Int(expiresIn.components.seconds)))),
        ]
        if let userId { claims.append(("sub", .string(userId))) }
        if !roles.isEmpty { claims.append(("role", .array(roles.map { .string($0) }))) }
        if !groups.isEmpty { claims.append(("webpubsub.group", .array(groups.map { .string($0) }))) }
        return try ClientAccess(endpoint: endpoint, hub: hub, token: AccessKeyJWT.sign(claims: claims, key: key), clientType: clientType)
    }

    /// The URL for a token obtained elsewhere (the service's `:generateToken`).
    package init(endpoint: String, hub: String, token: String, clientType: ClientType = .default) throws(WebPubSubError) {
        if let problem = WebPubSubNames.hubProblem(hub) { throw .invalidArgument(problem) }
        let lower = endpoint.lowercased()
        let wsEndpoint = (lower.hasPrefix("https://") ? "wss://" + lower.dropFirst(8) : "ws://" + lower.dropFirst(7))
        let base = wsEndpoint + clientType.hubsPath + percentEncode(hub)
        self.init(baseURL: base, token: token, url: base + "?access_token=" + token)
    }

    init(baseURL: String, token: String, url: String) {
        self.baseURL = baseURL
        self.token = token
        self.url = url
    }
}

/// The upstream `ce-signature` header: `sha256=<hex>` for each access key, comma-joined; the
/// HMAC-SHA256 of the connection id with the key's UTF-8 bytes.
package enum EventSignature {
    package static func header(connectionId: String, keys: [AccessKey]) -> String {
        keys.map { "sha256=" + hex(mac(connectionId, $0)) }.joined(separator: ",")
    }

    /// True when one entry of `header` is the signature of `connectionId` under one of `keys`;
    /// compared in constant time.
    package static func isValid(_ header: String, connectionId: String, keys: [AccessKey]) -> Bool {
        var valid = false
        for entry in header.split(separator: ",") {
            let trimmed = entry.trimmingASCIIWhitespace()
            guard trimmed.lowercased().hasPrefix("sha256="), let given = unhex(trimmed.dropFirst(7)) else { continue }
            for key in keys where constantTimeEquals(given, mac(connectionId, key)) {
                valid = true
            }
        }
        return valid
    }

    static func mac(_ connectionId: String, _ key: AccessKey) -> [UInt8] {
        HMACSHA256.authenticationCode(for: Array(connectionId.utf8), key: Array(key.value.utf8))
    }
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".unicodeScalars)
    var s = String.UnicodeScalarView()
    for b in bytes {
        s.append(digits[Int(b >> 4)])
        s.append(digits[Int(b & 0xF)])
    }
    return String(s)
}

func unhex(_ text: some StringProtocol) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    func v(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
    var i = 0
    while i < chars.count {
        guard let h = v(chars[i]), let l = v(chars[i + 1]) else { return nil }
        out.append(h << 4 | l)
        i += 2
    }
    return out
}

/// Decoded query parameters, repeated names kept.
package struct Query: Sendable {
    package let pairs: [(String, String)]

    package init(_ raw: String?) {
        pairs = (raw ?? "").split(separator: "&").map { pair in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (percentDecode(parts[0], plusIsSpace: true), parts.count > 1 ? percentDecode(parts[1], plusIsSpace: true) : "")
        }
    }

    package func first(_ name: String) -> String? { pairs.first { $0.0 == name }?.1 }
    package func all(_ name: String) -> [String] { pairs.filter { $0.0 == name }.map(\.1) }
}

/// An adapter that connects to Web PubSub as a client and, unless it has a connection of its
/// own, takes the bridge's (known only once the embedded hub listens, or from Entra ID).
package protocol WebPubSubClientAdapter: Sendable {
    /// Whether it connects through the bridge's `webpubsub` settings.
    var usesBridgeConnection: Bool { get }
    /// Where to connect, when ``usesBridgeConnection``.
    func use(connection: ClientAccessIssuer)
}

/// Makes client access URLs: signed with an access key, or issued by the service (Entra ID).
/// Listeners (`type: webpubsub` sources) connect with what it gives.
package struct ClientAccessIssuer: Sendable {
    let issue: @Sendable (_ hub: String, _ userId: String?, _ groups: [String], _ expiresIn: Duration) async throws -> ClientAccess

    package init(
        _ issue: @escaping @Sendable (_ hub: String, _ userId: String?, _ groups: [String], _ expiresIn: Duration) async throws -> ClientAccess
    ) {
        self.issue = issue
    }

    /// Signs locally with the connection string's key.
    package static func signing(_ connectionString: ConnectionString) -> ClientAccessIssuer {
        ClientAccessIssuer { hub, userId, groups, expiresIn in
            try ClientAccess.make(
                endpoint: connectionString.endpoint, hub: hub, key: connectionString.accessKey, userId: userId, roles: [], groups: groups,
                expiresIn: expiresIn)
        }
    }

    /// Asks `client` (which signs locally too, when it has a key).
    package static func service(_ client: WebPubSubServiceClient) -> ClientAccessIssuer {
        ClientAccessIssuer { hub, userId, groups, expiresIn in
            try await client.clientAccess(hub: hub, userId: userId, groups: groups, expiresIn: expiresIn)
        }
    }

    package func callAsFunction(hub: String, userId: String?, groups: [String], expiresIn: Duration) async throws -> ClientAccess {
        try await issue(hub, userId, groups, expiresIn)
    }
}
