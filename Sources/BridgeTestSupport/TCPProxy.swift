import NIOCore
import NIOPosix
import Synchronization

/// A loopback TCP proxy to a port, whose connections a test can cut: a dropped network link,
/// which closing a socket from either end (a close frame, a REST close) is not.
package final class TCPProxy: Sendable {
    package let port: Int
    private let server: any Channel
    private let state = State()

    final class State: Sendable {
        let connections = Mutex<[any Channel]>([])
        let accepted = Atomic<Int>(0)
    }

    /// Connections accepted since the proxy started.
    package var accepted: Int { state.accepted.load(ordering: .relaxed) }

    package init(to targetPort: Int, host: String = "127.0.0.1") async throws {
        let state = self.state
        server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                state.accepted.add(1, ordering: .relaxed)
                // Reads wait until the other side is connected.
                return inbound.setOption(.autoRead, value: false).flatMap {
                    ClientBootstrap(group: inbound.eventLoop).connect(host: host, port: targetPort)
                }.flatMap { outbound in
                    state.connections.withLock { $0 += [inbound, outbound] }
                    return inbound.pipeline.addHandler(Relay(to: outbound)).flatMap {
                        outbound.pipeline.addHandler(Relay(to: inbound))
                    }.flatMap {
                        inbound.setOption(.autoRead, value: true)
                    }
                }
            }
            .bind(host: host, port: 0).get()
        port = server.localAddress?.port ?? 0
    }

    /// Drops every connection through the proxy, without a close frame: both sides see the
    /// stream end. New connections are accepted as before.
    package func cut() {
        let all = state.connections.withLock { c in
            defer { c.removeAll() }
            return c
        }
        for channel in all { channel.close(promise: nil) }
    }

    package func stop() async {
        cut()
        try? await server.close()
    }
}

/// Writes what one side reads to the other; closes the other when one ends.
private final class Relay: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let other: any Channel

    init(to other: any Channel) {
        self.other = other
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        other.writeAndFlush(unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        other.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A loopback server that accepts connections and never answers: a peer that hangs.
package final class SilentServer: Sendable {
    package let port: Int
    private let server: any Channel

    package init() async throws {
        server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in channel.eventLoop.makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0).get()
        port = server.localAddress?.port ?? 0
    }

    package func stop() async {
        try? await server.close()
    }
}
