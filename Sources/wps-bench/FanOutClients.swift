import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// The fan-out's 1,000 clients, on `json.webpubsub.azure.v1`, kept as light as a client can be:
/// they share the machine's two cores with the hub they measure. Each frame is handled on its
/// event loop by a channel handler (no Swift task wakes per frame), and a message's sequence
/// number is read from its `"i":` field without parsing the whole frame. (The drain's
/// subscribers, ten of them, parse every frame: `Subscribers`.)
final class FanOutClients: Sendable {
    struct Tally {
        var connected = 0
        var failures: [String] = []
        /// Per sequence number, how many clients have it.
        var perSequence: [Int: Int] = [:]
        /// When every client had each sequence number.
        var completedAt: [Int: ContinuousClock.Instant] = [:]
    }

    let clients: Int
    private let tally = Mutex(Tally())
    private let channels = Mutex<[any Channel]>([])

    init(clients: Int) { self.clients = clients }

    /// Connects every client (50 handshakes at a time).
    func connect(url: (Int) throws -> String) async throws {
        for index in 0..<clients {
            let text = try url(index)
            guard let target = URL(string: text) else { throw BenchError("not a URL: \(text)") }
            let channel = try await open(target)
            channels.withLock { $0.append(channel) }
            if index % 50 == 49 { try await waitConnected(index + 1, timeout: .seconds(30)) }
        }
        try await waitConnected(clients, timeout: .seconds(60))
    }

    func close() async {
        for channel in channels.withLock({ $0 }) { try? await channel.close() }
    }

    /// When every client had message `sequence`, waiting for it up to `timeout`.
    func completion(of sequence: Int, timeout: Duration) async throws -> ContinuousClock.Instant? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let failure = tally.withLock({ $0.failures.first }) { throw BenchError("a client failed: \(failure)") }
            if let at = tally.withLock({ $0.completedAt[sequence] }) { return at }
            try await Task.sleep(for: .microseconds(100))
        }
        return nil
    }

    /// How many clients have `sequence`.
    func count(of sequence: Int) -> Int { tally.withLock { $0.perSequence[sequence] ?? 0 } }

    private func waitConnected(_ count: Int, timeout: Duration) async throws {
        try await waitUntilConnected(count, of: "client", timeout: timeout) { tally.withLock { ($0.connected, $0.failures) } }
    }

    private func open(_ url: URL) async throws -> any Channel {
        guard let host = url.host, let port = url.port else { throw BenchError("no host and port in \(url)") }
        let target = url.path + (url.query.map { "?" + $0 } ?? "")
        let handler = FrameCounter(clients: self)
        let upgraded: EventLoopFuture<Bool> = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOTypedWebSocketClientUpgrader<Bool>(maxFrameSize: 1 << 20) { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(handler)
                            return true
                        }
                    }
                    var headers = HTTPHeaders()
                    headers.add(name: "Host", value: "\(host):\(port)")
                    headers.add(name: "Sec-WebSocket-Protocol", value: "json.webpubsub.azure.v1")
                    let configuration = NIOTypedHTTPClientUpgradeConfiguration<Bool>(
                        upgradeRequestHead: HTTPRequestHead(version: .http1_1, method: .GET, uri: target, headers: headers),
                        upgraders: [upgrader],
                        notUpgradingCompletionHandler: { channel in channel.eventLoop.makeSucceededFuture(false) })
                    var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
                    // The hub's first frame may come in the same read as its 101 response.
                    pipeline.leftOverBytesStrategy = .forwardBytes
                    return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipeline)
                }
            }
        guard try await upgraded.get() else { throw BenchError("the hub refused the WebSocket upgrade") }
        return handler.channel.withLock { $0 }!
    }

    fileprivate func connected() { tally.withLock { $0.connected += 1 } }

    fileprivate func failed(_ reason: String) { tally.withLock { $0.failures.append(reason) } }

    fileprivate func received(_ sequence: Int) {
        tally.withLock { t in
            let count = t.perSequence[sequence, default: 0] + 1
            t.perSequence[sequence] = count
            if count == clients { t.completedAt[sequence] = .now }
        }
    }
}

/// Counts the messages of one client, on its event loop; answers pings.
private final class FrameCounter: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let clients: FanOutClients
    let channel = Mutex<(any Channel)?>(nil)

    init(clients: FanOutClients) { self.clients = clients }

    func handlerAdded(context: ChannelHandlerContext) {
        channel.withLock { $0 = context.channel }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            let (sequence, connected) = frame.data.withUnsafeReadableBytes { (Self.sequence(in: $0), Self.isConnected($0)) }
            if let sequence {
                clients.received(sequence)
            } else if connected {
                clients.connected()
            }
        case .ping:
            var pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            pong.maskKey = .random()
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            clients.failed("the hub closed a client's socket")
            context.close(promise: nil)
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        clients.failed("\(error)")
        context.close(promise: nil)
    }

    private static let messagePrefix = Array(#"{"type":"message""#.utf8)
    private static let connectedPrefix = Array(#"{"type":"system","event":"connected""#.utf8)
    private static let sequenceKey = Array(#""i":"#.utf8)

    /// The number after the first `"i":` of a message frame (`{"type":"message",…,"data":{"i":N,…}}`).
    static func sequence(in bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.starts(with: messagePrefix) else { return nil }
        let key = sequenceKey
        var index = 0
        while index + key.count <= bytes.count {
            if bytes[index] == key[0], bytes[index + 1] == key[1], bytes[index + 2] == key[2], bytes[index + 3] == key[3] {
                index += key.count
                var value = 0
                var digits = 0
                while index < bytes.count, (0x30...0x39).contains(bytes[index]) {
                    value = value * 10 + Int(bytes[index] - 0x30)
                    index += 1
                    digits += 1
                }
                return digits > 0 ? value : nil
            }
            index += 1
        }
        return nil
    }

    static func isConnected(_ bytes: UnsafeRawBufferPointer) -> Bool { bytes.starts(with: connectedPrefix) }
}
