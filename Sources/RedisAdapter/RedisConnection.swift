import CHiredis
import Foundation
import Logging
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Where a Redis server is: `redis://[user:password@]host[:port][/db]`.
package struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var user: String?
    package var password: String?
    package var db: Int

    package init(host: String, port: Int = 6379, user: String? = nil, password: String? = nil, db: Int = 0) {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.db = db
    }

    /// Parses a URL; the error says what is wrong with it.
    package init(parsing text: String) throws(RedisError) {
        if text.hasPrefix("rediss://") {
            throw RedisError(.config, "rediss:// (TLS) is not supported: Debian 12's hiredis 0.14 has no TLS")
        }
        guard text.hasPrefix("redis://") else { throw RedisError(.config, "'\(text)' is not a redis:// URL") }
        var rest = Substring(text.dropFirst("redis://".count))
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
        var db = 0
        if let slash = rest.firstIndex(of: "/") {
            let dbText = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
            if !dbText.isEmpty {
                guard let n = Int(dbText), n >= 0 else { throw RedisError(.config, "'\(dbText)' is not a database number") }
                db = n
            }
        }
        var host = String(rest)
        var port = 6379
        if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw RedisError(.config, "'\(rest[rest.index(after: colon)...])' is not a port number")
            }
            port = p
        }
        guard !host.isEmpty else { throw RedisError(.config, "the URL has no host") }
        self.init(host: host, port: port, user: user, password: password, db: db)
    }

    /// The URL without the password, for logs.
    package var description: String {
        var s = "redis://"
        if let user { s += user + "@" } else if password != nil { s += "***@" }
        s += "\(host):\(port)"
        if db != 0 { s += "/\(db)" }
        return s
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

/// A blocking hiredis connection: connected, authenticated and on its database. Used from one
/// thread at a time (a ``RedisThread``); only `interrupt` may be called from another.
final class RedisBlockingConnection: @unchecked Sendable {
    private let context: UnsafeMutablePointer<redisContext>
    let url: RedisURL

    init(_ url: RedisURL, connectTimeout: Duration = .seconds(5)) throws(RedisError) {
        self.url = url
        let seconds = max(1, Int(connectTimeout.components.seconds))
        guard let c = redisConnectWithTimeout(url.host, Int32(url.port), timeval(tv_sec: seconds, tv_usec: 0)) else {
            throw RedisError(.connection, "cannot connect to \(url): out of memory")
        }
        if c.pointee.err != 0 {
            let reason = Self.errorText(c)
            redisFree(c)
            throw RedisError(.connection, "cannot connect to \(url): \(reason)")
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
        if status != REDIS_OK { throw RedisError(.connection, "\(url): \(Self.errorText(context))") }
    }

    /// Waits for the next reply (also: the next pub/sub message).
    func read() throws(RedisError) -> RedisValue {
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
            let reason = context.pointee.err != 0 ? Self.errorText(context) : "connection lost"
            throw RedisError(.connection, "\(url): \(reason)")
        }
        let reply = raw.assumingMemoryBound(to: redisReply.self)
        defer { freeReplyObject(raw) }
        let value = RedisValue(reply)
        if case .error(let message) = value { throw RedisError(.reply, message) }
        return value
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
    let url: RedisURL
    private let thread = RedisThread()
    private let connection = Mutex<RedisBlockingConnection?>(nil)

    init(url: RedisURL) {
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
