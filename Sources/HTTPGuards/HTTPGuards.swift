import BridgeObservability
package import HummingbirdCore
package import Logging
package import NIOCore

/// Limits of an HTTP server that strangers can reach: how long a client may take to send its
/// request head, how long a connection may sit idle between requests, and how many connections
/// are served at once (past that, new ones wait in the listen backlog until one closes).
package struct ConnectionLimits: Sendable, Equatable {
    /// From the connection's start until its first request head is complete.
    package var headerTimeout: Duration = .seconds(10)
    /// Between requests on a kept-alive HTTP connection (not on WebSocket connections).
    package var idleTimeout: Duration = .seconds(60)
    /// Connections served at once.
    package var maxConnections: Int = 10_000

    package init() {}

    package init(headerTimeout: Duration, idleTimeout: Duration, maxConnections: Int) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }

    /// Hummingbird's connection cap for `ServerConfiguration.availableConnectionsDelegate`.
    package var availableConnections: MaximumAvailableConnections { MaximumAvailableConnections(maxConnections) }

    /// The idle timeout as NIO takes it.
    package var idleTimeAmount: TimeAmount { .nanoseconds(Int64(idleTimeout / .nanoseconds(1))) }
}

/// A server child channel with a deadline for the first request head in front of another one:
/// a client that connects and sends nothing, or trickles its headers in, is cut off at
/// `headerTimeout` instead of holding a socket (and a file descriptor) forever.
package struct HeadDeadlineChildChannel<Inner: ServerChildChannel>: ServerChildChannel {
    package typealias Value = Inner.Value

    let inner: Inner
    let headerTimeout: Duration

    package init(_ inner: Inner, headerTimeout: Duration) {
        self.inner = inner
        self.headerTimeout = headerTimeout
    }

    package func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let timeout = headerTimeout
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(HeadDeadlineHandler(timeout: timeout, logger: logger), position: .first)
        }.flatMap {
            inner.setup(channel: channel, logger: logger)
        }
    }

    package func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}

/// Closes the connection unless a complete request head (`CRLF CRLF`) arrives within `timeout`
/// of its start; once one has, it takes itself out of the pipeline.
final class HeadDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let timeout: Duration
    let logger: Logger
    private var deadline: Scheduled<Void>?
    /// The last bytes seen, for a `CRLF CRLF` split across reads.
    private var tail: [UInt8] = []

    init(timeout: Duration, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let amount = TimeAmount.nanoseconds(Int64(timeout / .nanoseconds(1)))
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let (logger, timeout) = (logger, timeout)
        deadline = context.eventLoop.scheduleTask(in: amount) {
            logger.debug("closing a connection that sent no complete request head in time", metadata: [LogKey.timeout: "\(timeout)"])
            loopBound.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let done = Self.completesHead(tail: &tail, buffer.readableBytesView)
        context.fireChannelRead(data)
        if done {
            deadline?.cancel()
            deadline = nil
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    /// Whether `bytes` (after `tail`, the last bytes seen before) hold `CRLF CRLF`; keeps the
    /// last three bytes in `tail`.
    static func completesHead(tail: inout [UInt8], _ bytes: some Collection<UInt8>) -> Bool {
        var window = tail
        for byte in bytes {
            window.append(byte)
            if window.count > 4 { window.removeFirst(window.count - 4) }
            if window == [13, 10, 13, 10] { return true }
        }
        tail = Array(window.suffix(3))
        return false
    }
}
