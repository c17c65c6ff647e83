import CHiredis
import Foundation
import Logging
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// hiredis's version, for `--version`. TLS is always there: the bridge links hiredis_ssl.
package var hiredisVersion: String { "hiredis \(wps_hiredis_major()).\(wps_hiredis_minor()).\(wps_hiredis_patch()) with TLS" }

/// Where a Redis server is and how to reach it: a `redis://` or `rediss://` (TLS) URL,
/// `[user:password@]host[:port][/db]` (an IPv6 address in brackets), with the TLS settings and
/// timeouts given next to it.
package struct RedisEndpoint: Sendable, Equatable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var user: String?
    package var password: String?
    package var db: Int
    /// nil: plain TCP.
    package var tls: RedisTLS?
    /// For the TCP connection (and the TLS handshake, which is bounded by `commandTimeout`).
    package var connectTimeout: Duration = .seconds(5)
    /// For each reply: a server that does not answer within it is a broken connection (and the
    /// usual reconnect). A pub/sub connection that hears nothing for that long PINGs the server.
    package var commandTimeout: Duration = .seconds(10)

    package init(host: String, port: Int = 6379, user: String? = nil, password: String? = nil, db: Int = 0, tls: RedisTLS? = nil) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.db = db
        self.tls = tls
    }

    /// Parses a URL; the error says what is wrong with it. A `rediss://` URL gets TLS with the
    /// system's trust roots; `tls` settings can be set after.
    package init(parsing text: String) throws(RedisError) {
        let tls: Bool
        var rest: Substring
        if text.hasPrefix("rediss://") {
            tls = true
            rest = text.dropFirst("rediss://".count)
        } else if text.hasPrefix("redis://") {
            tls = false
            rest = text.dropFirst("redis://".count)
        } else {
            throw RedisError(.config, "'\(Self.redacted(text))' is not a redis:// or rediss:// (TLS) URL")
        }
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                let u = String(credentials[..<colon]).removingPercentEncoding ?? String(credentials[..<colon])
                user = u.isEmpty ? nil : u
                password = String(credentials[credentials.index(after: colon)...]).removingPercentEncoding
            } else {
                password = String(credentials).removingPercentEncoding
            }
        }
        if let query = rest.firstIndex(of: "?") {
            throw RedisError(.config, "URL options ('\(rest[query...])') are not read: give timeouts and TLS settings as keys next to 'url'")
        }
        var db = 0
        if let slash = rest.firstIndex(of: "/") {
            let dbText = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !dbText.isEmpty {
                guard let n = Int(dbText), (0...10_000).contains(n) else {
                    throw RedisError(.config, "'\(dbText)' is not a database number (write /0, /1, ...)")
                }
                db = n
            }
        }
        var host: String
        var portText: Substring?
        if rest.hasPrefix("[") {
            // [IPv6]:port
            guard let close = rest.firstIndex(of: "]") else { throw RedisError(.config, "'\(rest)': an IPv6 address needs its closing ']'") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw RedisError(.config, "'\(rest)': after ']' only ':port' may follow") }
                portText = after.dropFirst()
            }
            guard Self.isIPv6(host) else { throw RedisError(.config, "'\(host)' in brackets is not an IPv6 address") }
        } else {
            host = String(rest)
            if let colon = rest.lastIndex(of: ":") {
                if rest[..<colon].contains(":") {
                    throw RedisError(.config, "'\(rest)': write an IPv6 address in brackets, e.g. redis://[::1]:6379")
                }
                host = String(rest[..<colon])
                portText = rest[rest.index(after: colon)...]
            }
        }
        var port = 6379
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw RedisError(.config, "'\(portText)' is not a port number") }
            port = p
        }
        guard !host.isEmpty else { throw RedisError(.config, "the URL has no host") }
        if let bad = host.unicodeScalars.first(where: { $0.value < 0x21 || $0.value == 0x7F || "/\\?#@".unicodeScalars.contains($0) }) {
            throw RedisError(
                .config,
                "the host '\(host.unicodeScalars.map { $0.value < 0x21 ? "?" : String($0) }.joined())' holds \(bad.value < 0x21 ? "a control character or space" : "'\(bad)'")"
            )
        }
        self.init(host: host, port: port, user: user, password: password, db: db, tls: tls ? RedisTLS() : nil)
    }

    /// The URL without the password, for logs.
    package var description: String {
        var s = tls == nil ? "redis://" : "rediss://"
        if let user { s += user + "@" } else if password != nil { s += "***@" }
        s += Self.isIPv6(host) ? "[\(host)]:\(port)" : "\(host):\(port)"
        if db != 0 { s += "/\(db)" }
        return s
    }

    static func isIPv6(_ text: String) -> Bool {
        var address = in6_addr()
        return inet_pton(AF_INET6, text, &address) == 1
    }

    static func isIPAddress(_ text: String) -> Bool {
        var address = in_addr()
        return isIPv6(text) || inet_pton(AF_INET, text, &address) == 1
    }

    /// A URL for an error message, its password replaced.
    static func redacted(_ text: String) -> String {
        guard let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].lastIndex(of: "@") else { return text }
        return String(text[..<scheme.upperBound]) + "***" + String(text[at...])
    }
}

/// TLS to Redis (`rediss://`): whose certificates to trust, the client's own certificate for
/// mutual TLS, and the name the server's certificate must hold.
package struct RedisTLS: Sendable, Hashable {
    /// PEM file of the certificate authorities to trust; nil: the system's (`/etc/ssl/certs`).
    package var caFile: String?
    /// The client certificate (PEM, with its chain) and key, for servers that ask for one.
    package var certFile: String?
    package var keyFile: String?
    /// The name the server's certificate must hold, and the SNI sent; nil: the URL's host (an
    /// IP address in the URL is checked against the certificate's IP addresses).
    package var serverName: String?
    /// Accept any certificate: only when spelled out in the config, and logged as a warning.
    package var insecureSkipVerify = false

    package init() {}

    /// Builds (or finds) the OpenSSL context: a file that cannot be used is reported here.
    package func check() throws(RedisError) { _ = try RedisTLSContext.shared(self) }
}

/// An OpenSSL client context for Redis connections, and the per-connection checks hiredis leaves
/// out: hiredis's own `redisCreateSSLContext` sends the name as SNI but never checks that the
/// certificate holds it, so any certificate from a trusted CA would do. Here the name (or the IP
/// address) is checked by OpenSSL (`SSL_set1_host`, `X509_VERIFY_PARAM_set1_ip_asc`).
final class RedisTLSContext: @unchecked Sendable {
    // SSL_CTX is safe to share between threads once set up; it is never changed after init.
    private let context: OpaquePointer
    let settings: RedisTLS

    init(_ settings: RedisTLS) throws(RedisError) {
        self.settings = settings
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw RedisError(.config, "cannot create a TLS context: \(Self.openSSLError())")
        }
        context = ctx
        _ = wps_ssl_ctx_set_min_tls12(ctx)
        SSL_CTX_set_verify(ctx, settings.insecureSkipVerify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, nil)
        if let caFile = settings.caFile {
            guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
                throw RedisError(
                    .config,
                    "tls.caFile '\(caFile)': \(Self.openSSLError()) (give a readable PEM file of the CA that signed the server's certificate)")
            }
        } else if SSL_CTX_set_default_verify_paths(ctx) != 1 {
            throw RedisError(.config, "cannot load the system's trust roots: \(Self.openSSLError()) (give tls.caFile)")
        }
        switch (settings.certFile, settings.keyFile) {
        case (let cert?, let key?):
            guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
                throw RedisError(.config, "tls.certFile '\(cert)': \(Self.openSSLError()) (give a readable PEM certificate)")
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, key, wps_ssl_filetype_pem()) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                let reason = Self.openSSLError()
                if reason.contains("mismatch") || reason.contains("does not match") {
                    throw RedisError(.config, "tls.keyFile '\(key)' is not the key of tls.certFile '\(cert)'")
                }
                throw RedisError(.config, "tls.keyFile '\(key)': \(reason) (give a readable, unencrypted PEM private key)")
            }
        case (nil, nil):
            break
        default:
            throw RedisError(.config, "tls.certFile and tls.keyFile go together (a client certificate and its key)")
        }
    }

    deinit { SSL_CTX_free(context) }

    /// Runs the TLS handshake on a connected context. Returns the SSL object, which hiredis owns
    /// from then on (freed with the context).
    func start(_ c: UnsafeMutablePointer<redisContext>, endpoint: RedisEndpoint, timeout: Duration) throws(RedisError) -> OpaquePointer {
        ERR_clear_error()
        guard let ssl = SSL_new(context) else { throw RedisError(.connection, "\(endpoint): TLS: \(Self.openSSLError())") }
        let name = settings.serverName ?? endpoint.host
        let byAddress = settings.serverName == nil && RedisEndpoint.isIPAddress(endpoint.host)
        // SNI carries host names only (RFC 6066).
        if !byAddress { _ = wps_ssl_set_server_name(ssl, name) }
        if !settings.insecureSkipVerify {
            let set = byAddress ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) : SSL_set1_host(ssl, name)
            guard set == 1 else {
                SSL_free(ssl)
                throw RedisError(.config, "\(endpoint): '\(name)' cannot be checked against a certificate")
            }
        }
        guard redisInitiateSSL(c, ssl) == REDIS_OK else {
            let failure = errno
            let verify = SSL_get_verify_result(ssl)
            let hiredisReason = RedisBlockingConnection.errorText(c)
            SSL_free(ssl)
            // OpenSSL reports the socket's timeout as "want read", which hiredis words as
            // "SSL_connect failed: (null)": errno still says EAGAIN.
            let timedOut = failure == EAGAIN || failure == EWOULDBLOCK || hiredisReason.hasSuffix(String(cString: strerror(EAGAIN)))
            if verify == X509_V_OK, timedOut {
                // The socket's timeout (commandTimeout) ran out: a stalled server, not a TLS problem.
                throw RedisError(
                    .connection,
                    "\(endpoint): no answer to the TLS handshake within \(timeout) (commandTimeout): the server is stalled, or this port does not serve TLS (then use redis://)"
                )
            }
            throw RedisError(.tls, "\(endpoint): TLS handshake failed: \(Self.describe(verify: verify, name: name, fallback: hiredisReason))")
        }
        return ssl
    }

    private static let cache = Mutex<[RedisTLS: RedisTLSContext]>([:])

    /// One context per set of settings, built when the configuration is read (where a bad file
    /// is reported) and shared by every connection with those settings.
    static func shared(_ settings: RedisTLS) throws(RedisError) -> RedisTLSContext {
        if let context = cache.withLock({ $0[settings] }) { return context }
        let context = try RedisTLSContext(settings)
        return cache.withLock { cache in
            if let existing = cache[settings] { return existing }
            cache[settings] = context
            return context
        }
    }

    /// A refused certificate: OpenSSL's reason, and what to do about it.
    static func describe(verify: Int, name: String, fallback: String) -> String {
        switch Int32(verify) {
        case X509_V_OK:
            if fallback.isEmpty || fallback.hasSuffix("(null)") {
                return
                    "the server ended the handshake (does this port serve TLS? does the server want a client certificate: tls.certFile and tls.keyFile?)"
            }
            return fallback
        case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH:
            return "the server's certificate is not valid for '\(name)' (connect by a name the certificate holds, or set tls.serverName to it)"
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
            X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
            let reason = String(cString: X509_verify_cert_error_string(verify))
            return "the server's certificate is not trusted (\(reason)); give the CA that signed it as tls.caFile"
        default:
            return "the server's certificate was refused: \(String(cString: X509_verify_cert_error_string(verify)))"
        }
    }

    /// The reason of OpenSSL's last error, and the queue emptied.
    static func openSSLError() -> String {
        var last: UInt = 0
        while case let e = ERR_get_error(), e != 0 { last = e }
        guard last != 0, let reason = ERR_reason_error_string(last) else { return "unknown OpenSSL error" }
        return String(cString: reason)
    }
}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}

/// What went wrong talking to Redis.
package struct RedisError: Error, Sendable, CustomStringConvertible {
    package enum Kind: Sendable {
        /// A bad URL or setting.
        case config
        /// Cannot connect, or the connection broke: reconnect.
        case connection
        /// AUTH refused.
        case authentication
        /// The TLS handshake failed: an untrusted or mismatched certificate, or a server that does
        /// not speak TLS. Not cured by retrying at once.
        case tls
        /// The server answered with an error (WRONGTYPE, NOGROUP, ...).
        case reply
    }

    package let kind: Kind
    package let message: String

    package init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    package var description: String { message }
}

/// A reply.
enum RedisValue: Sendable, Equatable {
    case string([UInt8])
    case status(String)
    case integer(Int64)
    case null
    case array([RedisValue])
    case error(String)

    var text: String? {
        switch self {
        case .string(let b): String(decoding: b, as: UTF8.self)
        case .status(let s): s
        case .integer(let i): String(i)
        default: nil
        }
    }

    var bytes: [UInt8]? {
        if case .string(let b) = self { return b }
        return nil
    }

    var array: [RedisValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    init(_ reply: UnsafeMutablePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            self = .string(r.str.map { Array(UnsafeRawBufferPointer(start: $0, count: r.len).bindMemory(to: UInt8.self)) } ?? [])
        case REDIS_REPLY_STATUS:
            self = .status(r.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: r.len), as: UTF8.self) } ?? "")
        case REDIS_REPLY_ERROR:
            self = .error(r.str.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: r.len), as: UTF8.self) } ?? "")
        case REDIS_REPLY_INTEGER:
            self = .integer(r.integer)
        case REDIS_REPLY_ARRAY:
            self = .array((0..<r.elements).map { RedisValue(r.element[$0]!) })
        default:
            self = .null
        }
    }
}

/// A blocking hiredis connection: connected (over TLS for `rediss://`), authenticated and on its
/// database, with the endpoint's timeouts on every read and write. Used from one thread at a
/// time (a ``RedisThread``); only `interrupt` may be called from another.
final class RedisBlockingConnection: @unchecked Sendable {
    private let context: UnsafeMutablePointer<redisContext>
    /// The SSL object of a TLS connection: hiredis's once the handshake is done, freed with the context.
    private let tlsConnection: OpaquePointer?
    let url: RedisEndpoint
    /// What a reply may take: the endpoint's `commandTimeout`, plus what a blocking command
    /// (XREADGROUP BLOCK) waits on purpose.
    let replyTimeout: Duration

    /// - Parameter blocking: how long this connection's commands block on purpose (added to the
    ///   command timeout).
    init(_ url: RedisEndpoint, blocking: Duration = .zero) throws(RedisError) {
        let replyTimeout = url.commandTimeout + blocking
        self.url = url
        self.replyTimeout = replyTimeout
        var connectTimeout = timeval(url.connectTimeout)
        var commandTimeout = timeval(replyTimeout)
        var options = redisOptions()
        options.type = Int32(REDIS_CONN_TCP.rawValue)
        options.endpoint.tcp.port = Int32(url.port)
        let connected: UnsafeMutablePointer<redisContext>? = url.host.withCString { host in
            withUnsafePointer(to: &connectTimeout) { connectPointer in
                withUnsafePointer(to: &commandTimeout) { commandPointer in
                    options.endpoint.tcp.ip = host
                    options.connect_timeout = connectPointer
                    options.command_timeout = commandPointer
                    return redisConnectWithOptions(&options)
                }
            }
        }
        guard let c = connected else { throw RedisError(.connection, "cannot connect to \(url): out of memory") }
        if c.pointee.err != 0 {
            let reason = Self.errorText(c)
            redisFree(c)
            let timedOut = reason.contains("timed out") || reason.contains("Resource temporarily unavailable")
            throw RedisError(
                .connection, "cannot connect to \(url): \(timedOut ? "no connection within connectTimeout (\(url.connectTimeout))" : reason)")
        }
        do {
            tlsConnection = try url.tls.map { tls throws(RedisError) in try RedisTLSContext.shared(tls).start(c, endpoint: url, timeout: replyTimeout)
            }
        } catch {
            redisFree(c)
            throw error
        }
        redisEnableKeepAlive(c)
        context = c
        if let password = url.password {
            let args = url.user.map { ["AUTH", $0, password] } ?? ["AUTH", password]
            do {
                _ = try command(args)
            } catch let error where error.kind == .reply {
                throw RedisError(.authentication, "\(url): authentication failed: \(error.message)")
            }
        }
        if url.db != 0 {
            _ = try command(["SELECT", String(url.db)])
        }
    }

    deinit { redisFree(context) }

    static func errorText(_ c: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: c.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// Sends a command and waits for its reply. An error reply throws `.reply`.
    func command(_ args: [String]) throws(RedisError) -> RedisValue {
        try command(args.map { Array($0.utf8) })
    }

    func command(_ args: [[UInt8]]) throws(RedisError) -> RedisValue {
        try append(args)
        return try read()
    }

    /// Queues a command without waiting (for pipelining; `read` takes the replies in order).
    func append(_ args: [[UInt8]]) throws(RedisError) {
        var lengths = args.map(\.count)
        let flat = args.flatMap { $0 }
        let status: Int32 = flat.withUnsafeBufferPointer { buffer in
            var pointers: [UnsafePointer<CChar>?] = []
            var offset = 0
            let base = buffer.baseAddress.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(bitPattern: 1)!
            for length in lengths {
                pointers.append((base + offset).assumingMemoryBound(to: CChar.self))
                offset += length
            }
            return pointers.withUnsafeMutableBufferPointer { p in
                redisAppendCommandArgv(context, Int32(args.count), p.baseAddress, &lengths)
            }
        }
        if status != REDIS_OK { throw failure() }
    }

    /// Waits for the next reply (also: the next pub/sub message).
    func read() throws(RedisError) -> RedisValue {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else { throw failure() }
        return try Self.value(raw)
    }

    private static func value(_ raw: UnsafeMutableRawPointer) throws(RedisError) -> RedisValue {
        defer { freeReplyObject(raw) }
        let value = RedisValue(raw.assumingMemoryBound(to: redisReply.self))
        if case .error(let message) = value { throw RedisError(.reply, message) }
        return value
    }

    /// The connection's error, a timeout named as one.
    private func failure() -> RedisError {
        guard context.pointee.err != 0 else { return RedisError(.connection, "\(url): connection lost") }
        let reason = Self.errorText(context)
        if context.pointee.err == REDIS_ERR_TIMEOUT || reason == String(cString: strerror(EAGAIN)) {
            return RedisError(.connection, "\(url): no reply within \(replyTimeout) (commandTimeout); the server is stalled or unreachable")
        }
        return RedisError(.connection, "\(url): \(reason.isEmpty ? "connection lost" : reason)")
    }

    /// The next pub/sub message. After `idle` without one, PINGs the server (allowed while
    /// subscribed; its `pong` is skipped), and fails when nothing at all comes back within the
    /// command timeout: a server that stopped answering is found, not waited for forever.
    func readSubscribed(idle: Duration) throws(RedisError) -> RedisValue {
        try flush()  // SUBSCRIBE, when it was only appended
        var pinged = false
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReplyFromReader(context, &raw) == REDIS_OK else { throw failure() }
            if let raw {
                let value = try Self.value(raw)
                if let parts = value.array, parts.first?.text == "pong" {
                    pinged = false
                    continue
                }
                return value
            }
            let wait = pinged ? replyTimeout : idle
            if try !readable(within: wait) {
                if pinged {
                    throw RedisError(
                        .connection, "\(url): no answer to PING within \(replyTimeout) (commandTimeout); the server is stalled or unreachable")
                }
                try append([Array("PING".utf8)])
                try flush()
                pinged = true
                continue
            }
            guard redisBufferRead(context) == REDIS_OK else { throw failure() }
        }
    }

    /// Whether bytes (or the end of the connection) are there to read within `wait`.
    private func readable(within wait: Duration) throws(RedisError) -> Bool {
        if let tls = tlsConnection, SSL_pending(tls) > 0 { return true }
        var descriptor = pollfd(fd: context.pointee.fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(clamping: Int64(wait / .milliseconds(1)))
        while true {
            let n = poll(&descriptor, 1, milliseconds)
            if n >= 0 { return n > 0 }
            if errno != EINTR { throw RedisError(.connection, "\(url): poll: \(String(cString: strerror(errno)))") }
        }
    }

    /// Writes what `append` queued.
    func flush() throws(RedisError) {
        var done: Int32 = 0
        repeat {
            guard redisBufferWrite(context, &done) == REDIS_OK else { throw failure() }
        } while done == 0
    }

    /// Makes a blocked `read` on another thread return with an error: for cancellation.
    func interrupt() {
        shutdown(context.pointee.fd, Int32(SHUT_RDWR))
    }
}

/// A thread of its own for blocking Redis calls, so that they never hold a thread of Swift's
/// cooperative pool.
final class RedisThread: Sendable {
    private let pool: NIOThreadPool

    init() {
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
    }

    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.runIfActive(body)
    }

    func shutdown() {
        pool.shutdownGracefully { _ in }
    }
}

/// A command connection on a thread of its own: connects at first use, and reconnects (then
/// tries the command once more) when the connection broke. For sinks and XACKs.
final class RedisCommandClient: Sendable {
    let url: RedisEndpoint
    private let thread = RedisThread()
    private let connection = Mutex<RedisBlockingConnection?>(nil)

    init(url: RedisEndpoint) {
        self.url = url
    }

    func command(_ args: [[UInt8]]) async throws -> RedisValue {
        try await thread.run { [self] in
            for attempt in 0..<2 {
                let conn: RedisBlockingConnection
                if let existing = connection.withLock({ $0 }) {
                    conn = existing
                } else {
                    conn = try RedisBlockingConnection(url)
                    connection.withLock { $0 = conn }
                }
                do {
                    return try conn.command(args)
                } catch let error as RedisError where error.kind == .connection && attempt == 0 {
                    connection.withLock { $0 = nil }
                }
            }
            throw RedisError(.connection, "\(url): connection lost")
        }
    }

    func command(_ args: [String]) async throws -> RedisValue {
        try await command(args.map { Array($0.utf8) })
    }

    func close() {
        connection.withLock { $0 = nil }
        thread.shutdown()
    }
}
