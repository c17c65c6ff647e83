import BridgeTestSupport
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization
import Testing
import WebPubSubProtocol

@testable import WebPubSub

/// The data-plane client's own HTTP/1.1 connections against a raw server that misbehaves on
/// purpose: connections closed with or without an answer, answers that never come or are too
/// large, more callers than connections, TLS with a private CA.
@Suite struct ConnectionPoolTests {
    static let send = ByteBuffer(string: #"{"a":1}"#)

    func client(
        _ server: ScriptedHTTPServer, scheme: String = "http", host: String = "127.0.0.1",
        configure: (inout WebPubSubServiceClient.Configuration) -> Void = { _ in }
    )
        throws -> WebPubSubServiceClient
    {
        var configuration = WebPubSubServiceClient.Configuration()
        configure(&configuration)
        return try WebPubSubServiceClient(
            endpoint: "\(scheme)://\(host):\(server.port)", authentication: .accessKey(AccessKey("pool-test-key")), configuration: configuration)
    }

    static func post(_ c: WebPubSubServiceClient) async throws(WebPubSubError) {
        try await c.sendToAll(hub: "h", payload: send, contentType: "application/json")
    }

    /// The error of one send that must fail; nil, recorded as an issue, when it went through.
    static func failure(_ c: WebPubSubServiceClient, sourceLocation: SourceLocation = #_sourceLocation) async -> WebPubSubError? {
        do {
            try await post(c)
            Issue.record("expected a failure", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    @Test func aConnectionIsKeptAliveAndReused() async throws {
        let server = try await ScriptedHTTPServer { _ in .answer() }
        let c = try client(server)
        for _ in 0..<5 { try await Self.post(c) }
        #expect(server.requests == 5)
        #expect(server.connections == 1)
        try await c.shutdown()
        await server.stop()
    }

    @Test func anAnswerWithConnectionCloseIsHonoured() async throws {
        let server = try await ScriptedHTTPServer { _ in .answer(close: true) }
        let c = try client(server)
        for _ in 0..<3 { try await Self.post(c) }
        #expect(server.requests == 3)
        #expect(server.connections == 3)
        try await c.shutdown()
        await server.stop()
    }

    @Test func aReusedConnectionClosedWithoutAnAnswerIsRetriedOnceOnANewOne() async throws {
        // The second request reaches a connection the server then closes: the service closing an
        // idle keep-alive connection as the request goes out.
        let server = try await ScriptedHTTPServer { request in request.index == 1 ? .close : .answer() }
        let c = try client(server)
        try await Self.post(c)
        try await Self.post(c)
        #expect(server.requests == 3)
        #expect(server.connections == 2)
        try await c.shutdown()
        await server.stop()
    }

    @Test func aNewConnectionClosedWithoutAnAnswerIsATransportError() async throws {
        let server = try await ScriptedHTTPServer { _ in .close }
        let c = try client(server)
        if let error = await Self.failure(c) {
            #expect(error.kind == .transport)
            #expect(error.isRetryable)
            #expect(error.message.contains("connection closed by the remote end"), "\(error.message)")
        }
        // Sent once: a fresh connection is not retried (the dispatcher's policy decides).
        #expect(server.requests == 1)
        try await c.shutdown()
        await server.stop()
    }

    @Test func anAnswerThatNeverComesTimesOut() async throws {
        let server = try await ScriptedHTTPServer { _ in .hang }
        let c = try client(server) { $0.requestTimeout = .milliseconds(300) }
        if let error = await Self.failure(c) {
            #expect(error.kind == .transport)
            #expect(error.message == "request timeout")
        }
        // The timed-out connection is closed, not reused for the next request.
        #expect(await server.waitUntilOpen(0))
        try await c.shutdown()
        await server.stop()
    }

    @Test func anAnswerLargerThanAllowedIsRefused() async throws {
        let server = try await ScriptedHTTPServer { _ in .answer(status: 400, body: String(repeating: "x", count: 5 * 1024 * 1024)) }
        let c = try client(server)
        if let error = await Self.failure(c) {
            #expect(error.kind == .transport)
            #expect(error.message.contains("larger than 4194304 bytes"), "\(error.message)")
        }
        try await c.shutdown()
        await server.stop()
    }

    @Test func callersBeyondMaxConnectionsWaitForOne() async throws {
        let server = try await ScriptedHTTPServer { _ in .answer(after: .milliseconds(20)) }
        let c = try client(server) { $0.maxConnections = 2 }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<20 {
                group.addTask { try await Self.post(c) }
            }
            try await group.waitForAll()
        }
        #expect(server.requests == 20)
        #expect(server.mostOpenAtOnce == 2)
        try await c.shutdown()
        await server.stop()
    }

    @Test func aCancelledRequestEndsAtOnceAsCancelled() async throws {
        let server = try await ScriptedHTTPServer { _ in .hang }
        let c = try client(server)
        let task = Task { try await Self.post(c) }
        #expect(await server.waitUntilRequests(1))
        task.cancel()
        do {
            try await task.value
            Issue.record("expected a failure")
        } catch let error as WebPubSubError {
            #expect(error.kind == .cancelled)
        }
        try await c.shutdown()
        await server.stop()
    }

    @Test func theRequestIsWrittenAsTheServiceExpectsIt() async throws {
        let server = try await ScriptedHTTPServer { _ in .answer() }
        let c = try client(server)
        try await c.sendToGroup(
            hub: "h", group: "a b", payload: Self.send, contentType: "application/json", metadata: [MetadataEntry(key: "k", value: "v")])
        let request = try #require(server.received.first)
        #expect(request.head.method == .POST)
        #expect(request.head.uri.hasPrefix("/api/hubs/h/groups/a%20b/:send?api-version="))
        #expect(request.head.headers["Host"] == ["127.0.0.1:\(server.port)"])
        #expect(request.head.headers["Content-Length"] == ["7"])
        #expect(request.head.headers["Content-Type"] == ["application/json"])
        #expect(request.head.headers.first(name: "Authorization")?.hasPrefix("Bearer ") == true)
        #expect(request.body == #"{"a":1}"#)
        try await c.shutdown()
        await server.stop()
    }

    // MARK: TLS

    @Test func httpsWithAPrivateCAIsTrustedOnlyWhenTheCAIsGiven() async throws {
        let pki = try TestPKI()
        let server = try await ScriptedHTTPServer(tls: try pki.serverContext()) { _ in .answer() }
        // Trusted by name and by address (the certificate names both).
        for host in ["localhost", "127.0.0.1"] {
            let trusting = try client(server, scheme: "https", host: host) { $0.caFile = pki.caFile }
            do {
                try await Self.post(trusting)
            } catch {
                Issue.record("\(host): \(error)")
            }
            try await trusting.shutdown()
        }
        #expect(server.requests == 2)

        let untrusting = try client(server, scheme: "https", host: "localhost")
        if let error = await Self.failure(untrusting) {
            #expect(error.kind == .transport)
            #expect(error.message.contains("not trusted"), "\(error.message)")
            #expect(error.message.contains("caFile"), "\(error.message)")
        }
        try await untrusting.shutdown()
        #expect(server.requests == 2)
        await server.stop()
    }

    @Test func aCertificateForAnotherNameIsRefused() async throws {
        let pki = try TestPKI(names: ["DNS:elsewhere.example"])
        let server = try await ScriptedHTTPServer(tls: try pki.serverContext()) { _ in .answer() }
        let c = try client(server, scheme: "https", host: "localhost") { $0.caFile = pki.caFile }
        if let error = await Self.failure(c) {
            #expect(error.kind == .transport)
            #expect(error.message.contains("not valid for localhost"), "\(error.message)")
        }
        try await c.shutdown()
        #expect(server.requests == 0)
        await server.stop()
    }

    @Test func aMissingCAFileIsNamedInTheError() async throws {
        let server = try await ScriptedHTTPServer { _ in .answer() }
        let c = try client(server, scheme: "https") { $0.caFile = "/nonexistent/ca.pem" }
        if let error = await Self.failure(c) {
            #expect(error.kind == .transport)
            #expect(error.message.contains("the TLS settings cannot be used"), "\(error.message)")
            #expect(error.message.contains("/nonexistent/ca.pem"), "\(error.message)")
        }
        try await c.shutdown()
        await server.stop()
    }

    @Test func originsAreParsed() {
        let plain = HTTP1ConnectionPool.Origin(endpoint: "http://example.com")
        #expect(plain == .init(host: "example.com", port: 80, tls: false))
        #expect(HTTP1ConnectionPool.Origin(endpoint: "HTTPS://x.webpubsub.azure.com") == .init(host: "x.webpubsub.azure.com", port: 443, tls: true))
        #expect(HTTP1ConnectionPool.Origin(endpoint: "http://[::1]:8080") == .init(host: "::1", port: 8080, tls: false))
        #expect(HTTP1ConnectionPool.Origin(endpoint: "http://[::1]:8080")?.hostHeader == "[::1]:8080")
        #expect(HTTP1ConnectionPool.Origin(endpoint: "https://h:443")?.hostHeader == "h")
        for bad in ["ftp://h", "http://", "http://h:0", "http://h:99999", "http://h:x", "http://[::1", "http://[::1]x"] {
            #expect(HTTP1ConnectionPool.Origin(endpoint: bad) == nil, "\(bad)")
        }
    }
}

extension HTTP1ConnectionPool.Origin {
    init(host: String, port: Int, tls: Bool) {
        self.init(endpoint: "http://x")!
        self.host = host
        self.port = port
        self.tls = tls
    }
}

extension TestPKI {
    func serverContext() throws -> NIOSSLContext {
        let configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem)))
        return try NIOSSLContext(configuration: configuration)
    }
}

/// A raw HTTP/1.1 server on loopback whose every answer the test scripts, counting connections
/// and requests.
final class ScriptedHTTPServer: Sendable {
    struct Received: Sendable {
        var index: Int
        var head: HTTPRequestHead
        var body: String
    }

    enum Action: Sendable {
        case answer(status: Int = 202, close: Bool = false, body: String = "", after: TimeAmount? = nil)
        /// Close the connection without an answer.
        case close
        /// Never answer.
        case hang
    }

    let port: Int
    private let channel: any Channel
    private let state: State

    final class State: Sendable {
        let script: @Sendable (Received) -> Action
        let received = Mutex<[Received]>([])
        let connections = Atomic<Int>(0)
        let open = Atomic<Int>(0)
        let mostOpen = Atomic<Int>(0)

        init(script: @escaping @Sendable (Received) -> Action) { self.script = script }
    }

    var requests: Int { state.received.withLock { $0.count } }
    var received: [Received] { state.received.withLock { $0 } }
    var connections: Int { state.connections.load(ordering: .relaxed) }
    var mostOpenAtOnce: Int { state.mostOpen.load(ordering: .relaxed) }

    init(tls: NIOSSLContext? = nil, script: @escaping @Sendable (Received) -> Action) async throws {
        let state = State(script: script)
        self.state = state
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                state.connections.add(1, ordering: .relaxed)
                let now = state.open.add(1, ordering: .relaxed).newValue
                while true {
                    let most = state.mostOpen.load(ordering: .relaxed)
                    if now <= most || state.mostOpen.compareExchange(expected: most, desired: now, ordering: .relaxed).exchanged { break }
                }
                child.closeFuture.whenComplete { _ in state.open.subtract(1, ordering: .relaxed) }
                return child.eventLoop.makeCompletedFuture {
                    if let tls { try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                    try child.pipeline.syncOperations.configureHTTPServerPipeline()
                    try child.pipeline.syncOperations.addHandler(ScriptHandler(state: state))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress?.port ?? 0
    }

    func stop() async { try? await channel.close() }

    func waitUntilRequests(_ count: Int) async -> Bool {
        for _ in 0..<200 {
            if requests >= count { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    func waitUntilOpen(_ count: Int) async -> Bool {
        for _ in 0..<200 {
            if state.open.load(ordering: .relaxed) == count { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    private final class ScriptHandler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let state: State
        var head: HTTPRequestHead?
        var body = ""

        init(state: State) { self.state = state }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                head = h
                body = ""
            case .body(let part):
                body += String(buffer: part)
            case .end:
                guard let head else { return }
                let received = state.received.withLock { list in
                    let r = Received(index: list.count, head: head, body: body)
                    list.append(r)
                    return r
                }
                switch state.script(received) {
                case .hang:
                    break
                case .close:
                    context.close(promise: nil)
                case .answer(let status, let close, let text, let after):
                    var headers = HTTPHeaders([("Content-Length", String(text.utf8.count))])
                    if close { headers.add(name: "Connection", value: "close") }
                    let response = HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers)
                    let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                    let answer: @Sendable () -> Void = {
                        let context = bound.value
                        context.write(NIOAny(HTTPServerResponsePart.head(response)), promise: nil)
                        if !text.isEmpty { context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil) }
                        context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in
                            if close { bound.value.close(promise: nil) }
                        }
                    }
                    if let after {
                        context.eventLoop.scheduleTask(in: after) { answer() }
                    } else {
                        answer()
                    }
                }
            }
        }
    }
}
