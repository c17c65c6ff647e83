import NIOCore
import NIOWebSocket
import Synchronization

/// One WebSocket of a client connection.
///
/// Frames are written straight to the channel, on its event loop, in the order they were
/// queued: no Swift task wakes and no actor is entered per frame. A fan-out queues its frame for
/// every socket, then drains the sockets of each event loop in one event-loop task
/// (``DrainBatch``). The close goes through the socket's task (Hummingbird's close handshake),
/// after everything queued before it.
///
/// This bypasses Hummingbird's outbound writer for data frames, which is sound because the hub's
/// WebSocket configuration has no extensions (no compression) that would transform frames on the
/// way out, and a server does not mask.
final class ClientSocket: Sendable {
    enum Item: Sendable {
        case frame(WebSocketFrame)
        case close(code: UInt16, reason: String)
    }

    /// Bytes waiting unsent in the channel above which the client counts as too slow, and the
    /// level it must come down to before the channel counts as writable again.
    static let highWaterMark = 4 << 20
    static let lowWaterMark = 1 << 20
    /// Frames queued and not yet handed to the channel, at most (the event loop is behind).
    static let maxQueuedFrames = 4096

    private struct State {
        var outbox: [Item] = []
        /// A drain is scheduled on the event loop.
        var scheduled = false
        /// A close is queued: nothing after it is written.
        var closing = false
        /// The client was found too slow; nothing more is written.
        var slow = false
    }

    let channel: any Channel
    /// The status code of the client's close frame (1005 when it gave none); 0 until one came.
    let clientCloseCode = Atomic<UInt16>(0)

    /// The client closed with 1000 (normal closure), as the SDKs' `close()` does.
    var closedNormally: Bool { clientCloseCode.load(ordering: .relaxed) == 1000 }
    private let state = Mutex(State())
    private let closes: AsyncStream<(code: UInt16, reason: String)>.Continuation
    private let closeStream: AsyncStream<(code: UInt16, reason: String)>
    private let onSlow: @Sendable () -> Void

    /// `onSlow` runs (once, on the event loop) when the client does not read fast enough; the
    /// channel is closed then.
    init(channel: any Channel, onSlow: @escaping @Sendable () -> Void) {
        self.channel = channel
        self.onSlow = onSlow
        (closeStream, closes) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Before the first drain (the event loop runs its tasks in order).
        channel.eventLoop.execute { [channel] in
            guard channel.isActive else { return }
            do {
                try channel.syncOptions?.setOption(
                    ChannelOptions.writeBufferWaterMark, value: .init(low: Self.lowWaterMark, high: Self.highWaterMark))
                try CloseGuard.install(in: channel)
                try CloseFrameObserver.install(in: channel, for: self)
            } catch {
                channel.close(promise: nil)
            }
        }
    }

    enum EnqueueResult {
        /// Queued; the socket must be drained (``DrainBatch/add(_:)`` or ``drainSoon()``).
        case drainNeeded
        /// Queued; a drain is already on its way.
        case queued
        /// Not queued: the socket is closing, or too slow.
        case refused
        /// Not queued: too many frames wait for the event loop.
        case full
    }

    /// Queues a frame. A close ends the socket: nothing queued after it is written.
    func enqueue(_ frame: SocketFrame) -> EnqueueResult {
        let item: Item
        switch frame {
        case .text(let text): item = .frame(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text)))
        case .textBytes(let bytes): item = .frame(WebSocketFrame(fin: true, opcode: .text, data: bytes))
        case .binaryBytes(let bytes): item = .frame(WebSocketFrame(fin: true, opcode: .binary, data: bytes))
        case .binary(let bytes): item = .frame(WebSocketFrame(fin: true, opcode: .binary, data: ByteBuffer(bytes: bytes)))
        case .close(let code, let reason): item = .close(code: code, reason: reason)
        }
        return state.withLock { s in
            if s.closing || s.slow { return .refused }
            if case .frame = item, s.outbox.count >= Self.maxQueuedFrames { return .full }
            if case .close = item { s.closing = true }
            s.outbox.append(item)
            if s.scheduled { return .queued }
            s.scheduled = true
            return .drainNeeded
        }
    }

    /// Queues a close with `code` and `reason` unless one is queued already.
    func finish(code: UInt16 = 1008, reason: String = "Connection ended") {
        if case .drainNeeded = enqueue(.close(code: code, reason: reason)) { drainSoon() }
    }

    /// Schedules a drain of this socket alone.
    func drainSoon() {
        channel.eventLoop.execute { self.drain() }
    }

    /// How long a close handshake may take before the channel is closed anyway (a client that
    /// neither reads nor answers).
    static let closeTimeout = TimeAmount.seconds(10)

    /// Writes what is queued to the channel. Runs on the channel's event loop.
    func drain() {
        guard channel.eventLoop.inEventLoop else { return drainSoon() }
        let (items, wasSlow): ([Item], Bool) = state.withLock { s in
            s.scheduled = false
            var items: [Item] = []
            swap(&items, &s.outbox)
            return (items, s.slow)
        }
        if wasSlow { return }
        var wrote = false
        for item in items {
            switch item {
            case .frame(let frame):
                if !wrote, isStalled {
                    return closeSlow()
                }
                channel.write(frame, promise: nil)
                wrote = true
            case .close(let code, let reason):
                if wrote { channel.flush() }
                // Hummingbird's close frame would wait for room that a client which does not
                // read never makes.
                if isStalled { return closeSlow() }
                closes.yield((code, reason))
                closes.finish()
                channel.eventLoop.scheduleTask(in: Self.closeTimeout) { [channel] in channel.close(promise: nil) }
                return
            }
        }
        if wrote { channel.flush() }
    }

    /// More than `highWaterMark` bytes wait unsent: the client does not read.
    private var isStalled: Bool { !channel.isWritable && channel.isActive }

    /// Whether the socket was closed because its client did not read.
    var closedAsSlow: Bool { state.withLock { $0.slow } }

    private func closeSlow() {
        state.withLock { $0.slow = true }
        channel.close(promise: nil)
        onSlow()
        closes.finish()
    }

    /// The close asked for, once it is this socket's turn (after every frame queued before it);
    /// nil when the socket was closed for being too slow.
    func closeRequest() async -> (code: UInt16, reason: String)? {
        for await close in closeStream { return close }
        return nil
    }
}

/// Drops frames written after a close frame. Hummingbird's handler sends a close of its own (the
/// client closed, a protocol error, a ping timeout) that the socket's outbox does not know of;
/// RFC 6455 allows nothing after it. Sits next to the frame encoder, so it sees Hummingbird's
/// frames and the socket's.
final class CloseGuard: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private var closed = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if closed {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        if unwrapOutboundIn(data).opcode == .connectionClose { closed = true }
        context.write(data, promise: promise)
    }

    static func install(in channel: any Channel) throws {
        let operations = channel.pipeline.syncOperations
        let encoder = try operations.handler(type: WebSocketFrameEncoder.self)
        try operations.addHandler(CloseGuard(), position: .after(encoder))
    }
}

/// Sockets to drain, grouped by event loop: one event-loop task per loop for a whole fan-out.
struct DrainBatch {
    private var loops: [ObjectIdentifier: (loop: any EventLoop, sockets: [ClientSocket])] = [:]

    mutating func add(_ socket: ClientSocket) {
        let loop = socket.channel.eventLoop
        loops[ObjectIdentifier(loop), default: (loop, [])].sockets.append(socket)
    }

    /// Schedules the drains.
    func run() {
        for (loop, sockets) in loops.values {
            loop.execute {
                for socket in sockets { socket.drain() }
            }
        }
    }
}

/// Notes the status code of the client's close frame, which the WebSocket library answers
/// itself: a reliable client that closes with 1000 ends its session, any other way out keeps it
/// for a reconnect. Sits next to the frame decoder, so it sees every frame before the library.
final class CloseFrameObserver: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame

    /// Weak: the socket owns the channel, whose pipeline owns this handler.
    private weak var socket: ClientSocket?

    init(_ socket: ClientSocket) {
        self.socket = socket
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if frame.opcode == .connectionClose {
            var payload = frame.unmaskedData
            let code = payload.readInteger(as: UInt16.self) ?? 1005
            socket?.clientCloseCode.store(code == 0 ? 1005 : code, ordering: .relaxed)
        }
        context.fireChannelRead(data)
    }

    static func install(in channel: any Channel, for socket: ClientSocket) throws {
        let operations = channel.pipeline.syncOperations
        let decoder = try operations.handler(type: ByteToMessageHandler<WebSocketFrameDecoder>.self)
        try operations.addHandler(CloseFrameObserver(socket), position: .after(decoder))
    }
}
