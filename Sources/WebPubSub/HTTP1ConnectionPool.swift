import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// Keep-alive HTTP/1.1 connections to one origin: the path every data-plane request takes.
///
/// AsyncHTTPClient spent about 100 µs of CPU per request on this machine (its pool state machine,
/// the URL parsed for each request, a response-body stream, several hops between the event loop
/// and the caller). Here a request is one write to an idle connection and one promise: a
/// fraction of that. Requests are not pipelined: a connection carries one request at a time, and
/// at most `maxConnections` are open; callers beyond that wait for one to come free.
final class HTTP1ConnectionPool: Sendable {
    struct Origin: Sendable, Equatable {
        var host: String
        var port: Int
        var tls: Bool

        /// `http(s)://host[:port]` (an IPv6 host in brackets); nil for anything else.
        init?(endpoint: String) {
            let lower = endpoint.lowercased()
            let rest: Substring
            if lower.hasPrefix("https://") {
                (tls, rest) = (true, endpoint.dropFirst(8))
            } else if lower.hasPrefix("http://") {
                (tls, rest) = (false, endpoint.dropFirst(7))
            } else {
                return nil
            }
            var host = Substring(rest)
            var portText: Substring?
            if host.hasPrefix("[") {
                guard let close = host.firstIndex(of: "]") else { return nil }
                let after = host[host.index(after: close)...]
                portText = after.hasPrefix(":") ? after.dropFirst() : (after.isEmpty ? nil : "x")
                host = host[host.index(after: host.startIndex)..<close]
            } else if let colon = host.lastIndex(of: ":") {
                portText = host[host.index(after: colon)...]
                host = host[..<colon]
            }
            guard !host.isEmpty, !host.contains("/") else { return nil }
            self.host = String(host)
            if let portText {
                guard let port = Int(portText), (1...65535).contains(port) else { return nil }
                self.port = port
            } else {
                port = tls ? 443 : 80
            }
        }

        /// The `Host` header: the port only when it is not the scheme's default.
        var hostHeader: String {
            let name = host.contains(":") ? "[\(host)]" : host
            return port == (tls ? 443 : 80) ? name : "\(name):\(port)"
        }
    }

    struct Response: Sendable {
        var head: HTTPResponseHead
        var body: ByteBuffer
    }

    /// Why a request has no answer, in words for logs.
    struct Failure: Error, CustomStringConvertible {
        enum Kind: Sendable { case connect, closed, timeout, tooLarge, tls, shutDown, cancelled, other }
        var kind: Kind
        var description: String
    }

    let origin: Origin
    private let maxConnections: Int
    private let connectTimeout: TimeAmount
    private let maxResponseBytes: Int
    /// nil for `http`; the error when the TLS settings could not be loaded (each request says so).
    private let sslContext: Result<NIOSSLContext, Failure>?
    private let group: any EventLoopGroup
    /// The group's loops: a caller on one of them gets connections on it.
    private let loops: [ObjectIdentifier]
    private let state = Mutex(State())

    private struct State {
        var idle: [Connection] = []
        var open = 0
        var waiters: [(id: UInt64, continuation: CheckedContinuation<Grant, any Error>)] = []
        var nextWaiter: UInt64 = 0
        var shutDown = false
    }

    /// What a waiting caller is given: a connection someone released, or room to open one.
    private enum Grant: Sendable {
        case connection(Connection)
        case room
    }

    /// - Parameter caFile: a PEM file of certificate authorities trusted besides the system's.
    init(
        origin: Origin, caFile: String?, maxConnections: Int, connectTimeout: Duration,
        maxResponseBytes: Int = 4 * 1024 * 1024, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.origin = origin
        self.maxConnections = max(1, maxConnections)
        self.connectTimeout = .nanoseconds(Int64(connectTimeout / .nanoseconds(1)))
        self.maxResponseBytes = maxResponseBytes
        self.group = group
        loops = group.makeIterator().map { ObjectIdentifier($0) }
        sslContext = origin.tls ? Self.makeSSLContext(caFile: caFile) : nil
    }

    private static func makeSSLContext(caFile: String?) -> Result<NIOSSLContext, Failure> {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.applicationProtocols = ["http/1.1"]
        if let caFile {
            do {
                let certificates = try NIOSSLCertificate.fromPEMFile(caFile)
                guard !certificates.isEmpty else {
                    return .failure(Failure(kind: .tls, description: "the TLS settings cannot be used: \(caFile) holds no PEM certificate"))
                }
                configuration.additionalTrustRoots = [.certificates(certificates)]
            } catch {
                return .failure(Failure(kind: .tls, description: "the TLS settings cannot be used: cannot read the CA file \(caFile) (\(error))"))
            }
        }
        do {
            return .success(try NIOSSLContext(configuration: configuration))
        } catch {
            return .failure(Failure(kind: .tls, description: "the TLS settings cannot be used: \(error)"))
        }
    }

    /// Sends one request and reads its whole answer. `target` is the path with its query.
    /// A request that finds its reused connection closed by the server before any answer is sent
    /// again once on a new connection (the server closes idle keep-alive connections at will).
    func execute(
        method: HTTPMethod, target: String, headers: HTTPHeaders, body: ByteBuffer?, timeout: Duration
    ) async throws(Failure) -> Response {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: headers)
        head.headers.replaceOrAdd(name: "Host", value: origin.hostHeader)
        if let body {
            head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        } else if method == .POST || method == .PUT || method == .PATCH {
            head.headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        let deadline = NIODeadline.now() + .nanoseconds(Int64(timeout / .nanoseconds(1)))
        var attempt = 0
        while true {
            attempt += 1
            let (connection, reused) = try await lease(deadline: deadline)
            do {
                let response = try await connection.send(Request(head: head, body: body, deadline: deadline))
                release(connection)
                return response
            } catch let failure as Failure {
                release(connection)
                if failure.kind == .closed, reused, attempt == 1, !Task.isCancelled { continue }
                throw failure
            } catch {
                release(connection)
                throw Failure(kind: .other, description: "\(error)")
            }
        }
    }

    /// Closes every idle connection and refuses new requests; requests under way finish.
    func shutdown() async {
        let (idle, waiters) = state.withLock { state in
            state.shutDown = true
            defer {
                state.idle.removeAll()
                state.waiters.removeAll()
            }
            return (state.idle, state.waiters)
        }
        for waiter in waiters { waiter.continuation.resume(throwing: Failure(kind: .shutDown, description: "the client was shut down")) }
        for connection in idle { try? await connection.channel.close() }
    }

    // MARK: Connections

    private enum Step {
        case use(Connection)
        case open
        case wait
    }

    private func lease(deadline: NIODeadline) async throws(Failure) -> (Connection, reused: Bool) {
        // A caller on an event loop (a dispatcher worker) gets a connection of that loop.
        let here = MultiThreadedEventLoopGroup.currentEventLoop.flatMap { loops.contains(ObjectIdentifier($0)) ? $0 : nil }
        while true {
            let step: Step = try state.withLock { (state) throws(Failure) -> Step in
                if state.shutDown { throw Failure(kind: .shutDown, description: "the client was shut down") }
                state.idle.removeAll { !$0.channel.isActive }
                // On an event loop: that loop's idle connection, else a new one there while
                // there is room, else any. Elsewhere: any idle connection, else a new one.
                if let here {
                    if let index = state.idle.lastIndex(where: { $0.channel.eventLoop === here }) {
                        return .use(state.idle.remove(at: index))
                    }
                    if state.open < maxConnections {
                        state.open += 1
                        return .open
                    }
                }
                if let connection = state.idle.popLast() { return .use(connection) }
                if state.open < maxConnections {
                    state.open += 1
                    return .open
                }
                return .wait
            }
            switch step {
            case .use(let connection):
                return (connection, true)
            case .open:
                return (try await connect(deadline: deadline, on: here), false)
            case .wait:
                switch try await waitForGrant() {
                case .connection(let connection):
                    if connection.channel.isActive { return (connection, true) }
                case .room:
                    return (try await connect(deadline: deadline, on: here), false)
                }
            }
        }
    }

    private func waitForGrant() async throws(Failure) -> Grant {
        let id = state.withLock { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Grant, any Error>) in
                    let refusal: Failure? = state.withLock { state in
                        if state.shutDown { return Failure(kind: .shutDown, description: "the client was shut down") }
                        if Task.isCancelled { return Failure(kind: .cancelled, description: "the request was cancelled") }
                        state.waiters.append((id, continuation))
                        return nil
                    }
                    if let refusal { continuation.resume(throwing: refusal) }
                }
            } onCancel: {
                let waiter = state.withLock { state in
                    state.waiters.firstIndex { $0.id == id }.map { state.waiters.remove(at: $0) }
                }
                waiter?.continuation.resume(throwing: Failure(kind: .cancelled, description: "the request was cancelled"))
            }
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(kind: .other, description: "\(error)")
        }
    }

    /// Opens a connection; the caller holds one unit of `open`, given back if this fails.
    private func connect(deadline: NIODeadline, on eventLoop: (any EventLoop)?) async throws(Failure) -> Connection {
        let origin = origin
        let sslContext: NIOSSLContext?
        switch self.sslContext {
        case .none: sslContext = nil
        case .success(let context): sslContext = context
        case .failure(let failure):
            giveBackRoom()
            throw failure
        }
        let maxResponseBytes = maxResponseBytes
        let closeReason = CloseReason()
        let remaining = deadline - .now()
        let bootstrap = ClientBootstrap(group: eventLoop ?? group.next())
            .connectTimeout(min(connectTimeout, max(remaining, .milliseconds(1))))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let sslContext {
                        // An IP address is not a server name (SNI); the certificate is still checked against it.
                        let isAddress = (try? SocketAddress(ipAddress: origin.host, port: 0)) != nil
                        let serverName = isAddress ? nil : origin.host
                        try pipeline.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    try pipeline.addHTTPClientHandlers(leftOverBytesStrategy: .fireError)
                    try pipeline.addHandler(ExchangeHandler(maxResponseBytes: maxResponseBytes, host: origin.host, closeReason: closeReason))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: origin.host, port: origin.port).get()
        } catch {
            giveBackRoom()
            if Task.isCancelled { throw Failure(kind: .cancelled, description: "the request was cancelled") }
            throw Failure(kind: .connect, description: Self.describeConnectFailure(error, origin: origin))
        }
        let connection = Connection(channel: channel, closeReason: closeReason)
        channel.closeFuture.whenComplete { [weak self] _ in self?.connectionClosed(connection) }
        return connection
    }

    /// A refused TLS handshake in words, with what to do about it.
    static func describeTLSFailure(_ error: any Error, host: String) -> String {
        let text = "\(error)"
        if text.contains("failedToValidateHostname") || text.contains("HOSTNAME_MISMATCH") {
            return "TLS: the server's certificate is not valid for \(host) (\(text))"
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return
                "TLS: the server's certificate is not trusted (CERTIFICATE_VERIFY_FAILED); if a private CA signed it, give that CA's PEM file as webpubsub.caFile"
        }
        return "TLS: \(text)"
    }

    private static func describeConnectFailure(_ error: any Error, origin: Origin) -> String {
        let at = "\(origin.host):\(origin.port)"
        if let timeout = error as? ChannelError, case .connectTimeout = timeout { return "connect timeout (\(at))" }
        let text = "\(error)"
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused (\(at))" }
        return "cannot connect to \(at): \(text)"
    }

    /// After a request: the connection goes to a waiting caller, back to the idle list, or is
    /// closed (the server said `Connection: close`, or it broke).
    private func release(_ connection: Connection) {
        guard connection.channel.isActive, connection.reusable else {
            connection.channel.close(promise: nil)
            return
        }
        let (waiter, close) = state.withLock { state -> (CheckedContinuation<Grant, any Error>?, Bool) in
            if state.shutDown { return (nil, true) }
            if !state.waiters.isEmpty { return (state.waiters.removeFirst().continuation, false) }
            state.idle.append(connection)
            return (nil, false)
        }
        if close { connection.channel.close(promise: nil) }
        waiter?.resume(returning: .connection(connection))
    }

    private func connectionClosed(_ connection: Connection) {
        let waiter = state.withLock { state -> CheckedContinuation<Grant, any Error>? in
            state.idle.removeAll { $0 === connection }
            if !state.waiters.isEmpty { return state.waiters.removeFirst().continuation }
            state.open -= 1
            return nil
        }
        waiter?.resume(returning: .room)
    }

    private func giveBackRoom() {
        let waiter = state.withLock { state -> CheckedContinuation<Grant, any Error>? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst().continuation }
            state.open -= 1
            return nil
        }
        waiter?.resume(returning: .room)
    }
}

/// One request on the wire, with the promise its answer completes.
private struct Request: Sendable {
    var head: HTTPRequestHead
    var body: ByteBuffer?
    var deadline: NIODeadline
}

/// Why a connection broke (a refused TLS handshake, say), kept for a request written after it.
private final class CloseReason: Sendable {
    let failure = Mutex<HTTP1ConnectionPool.Failure?>(nil)
}

private final class Connection: Sendable {
    let channel: any Channel
    let closeReason: CloseReason
    private let keepAlive = Atomic<Bool>(true)

    init(channel: any Channel, closeReason: CloseReason) {
        self.channel = channel
        self.closeReason = closeReason
    }

    var reusable: Bool { keepAlive.load(ordering: .acquiring) }

    func send(_ request: Request) async throws -> HTTP1ConnectionPool.Response {
        let promise = channel.eventLoop.makePromise(of: HTTP1ConnectionPool.Response.self)
        let channel = channel
        return try await withTaskCancellationHandler {
            // A connection closed before the write leaves the pipeline without our handler: the
            // write itself fails, and so does the request.
            let written = channel.eventLoop.makePromise(of: Void.self)
            let closeReason = closeReason
            written.futureResult.whenFailure { _ in
                promise.fail(
                    closeReason.failure.withLock { $0 }
                        ?? HTTP1ConnectionPool.Failure(kind: .closed, description: "connection closed by the remote end"))
            }
            channel.writeAndFlush(Exchange(request: request, promise: promise), promise: written)
            let response = try await promise.futureResult.get()
            if !response.head.isKeepAlive { keepAlive.store(false, ordering: .releasing) }
            return response
        } onCancel: {
            channel.eventLoop.execute {
                promise.fail(HTTP1ConnectionPool.Failure(kind: .cancelled, description: "the request was cancelled"))
                channel.close(promise: nil)
            }
        }
    }
}

private struct Exchange: Sendable {
    var request: Request
    var promise: EventLoopPromise<HTTP1ConnectionPool.Response>
}

/// Writes a request in one flush and gathers its answer; fails the request when the connection
/// breaks, the deadline passes or the answer is larger than allowed.
private final class ExchangeHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Exchange
    typealias OutboundOut = HTTPClientRequestPart

    private let maxResponseBytes: Int
    private let host: String
    private var pending: EventLoopPromise<HTTP1ConnectionPool.Response>?
    private var head: HTTPResponseHead?
    private var body: ByteBuffer?
    private var timeout: Scheduled<Void>?

    private let closeReason: CloseReason

    init(maxResponseBytes: Int, host: String, closeReason: CloseReason) {
        self.maxResponseBytes = maxResponseBytes
        self.host = host
        self.closeReason = closeReason
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let exchange = unwrapOutboundIn(data)
        guard pending == nil else {
            let failure = HTTP1ConnectionPool.Failure(kind: .other, description: "a request is already under way on this connection")
            exchange.promise.fail(failure)
            promise?.fail(failure)
            return
        }
        guard context.channel.isActive else {
            let failure =
                closeReason.failure.withLock { $0 } ?? HTTP1ConnectionPool.Failure(kind: .closed, description: "connection closed by the remote end")
            exchange.promise.fail(failure)
            promise?.fail(failure)
            return
        }
        pending = exchange.promise
        head = nil
        body = nil
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        timeout = context.eventLoop.scheduleTask(deadline: exchange.request.deadline) {
            bound.value.handler.fail(HTTP1ConnectionPool.Failure(kind: .timeout, description: "request timeout"))
            bound.value.context.close(promise: nil)
        }
        context.write(wrapOutboundOut(.head(exchange.request.head)), promise: nil)
        if let body = exchange.request.body, body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        promise?.succeed()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let responseHead):
            head = responseHead
        case .body(var part):
            guard pending != nil else { return }
            if (body?.readableBytes ?? 0) + part.readableBytes > maxResponseBytes {
                fail(HTTP1ConnectionPool.Failure(kind: .tooLarge, description: "the answer is larger than \(maxResponseBytes) bytes"))
                context.close(promise: nil)
                return
            }
            if body == nil { body = part } else { body!.writeBuffer(&part) }
        case .end:
            guard let promise = pending, let head else { return }
            pending = nil
            timeout?.cancel()
            promise.succeed(.init(head: head, body: body ?? ByteBuffer()))
            if !head.isKeepAlive { context.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(closeReason.failure.withLock { $0 } ?? HTTP1ConnectionPool.Failure(kind: .closed, description: "connection closed by the remote end"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let failure: HTTP1ConnectionPool.Failure
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            failure = .init(kind: .tls, description: HTTP1ConnectionPool.describeTLSFailure(error, host: host))
        } else {
            failure = .init(kind: .other, description: "\(error)")
        }
        closeReason.failure.withLock { if $0 == nil { $0 = failure } }
        fail(failure)
        context.close(promise: nil)
    }

    private func fail(_ failure: HTTP1ConnectionPool.Failure) {
        timeout?.cancel()
        timeout = nil
        guard let promise = pending else { return }
        pending = nil
        promise.fail(failure)
    }
}

/// Runs tasks on one of NIO's event loops (a task executor preference); `all` has one per loop of
/// the singleton group the pool connects on.
package final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    package static let all: [any TaskExecutor] = MultiThreadedEventLoopGroup.singleton.makeIterator().map { EventLoopTaskExecutor(eventLoop: $0) }

    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
