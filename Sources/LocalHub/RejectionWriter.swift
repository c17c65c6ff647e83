import BridgeJSON
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Hummingbird answers a refused WebSocket upgrade with a bare `400`. The service answers with
/// the reason's status (401 for a bad token, the event handler's 4xx for a rejected `connect`)
/// and an error body; this handler rewrites that one response on channels where the hub
/// refused an upgrade, and passes every other response through.
final class RejectionWriter: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let rejection: @Sendable (ObjectIdentifier) -> (status: Int, message: String)?
    private var pending: (status: Int, message: String)?

    init(rejection: @escaping @Sendable (ObjectIdentifier) -> (status: Int, message: String)?) {
        self.rejection = rejection
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status == .badRequest && head.headerFields[.contentLength] == "0":
            guard let found = rejection(ObjectIdentifier(context.channel)) else {
                context.write(data, promise: promise)
                return
            }
            pending = found
            let body = Self.body(found)
            head.status = .init(code: found.status)
            head.headerFields[.contentType] = "application/json; charset=utf-8"
            head.headerFields[.contentLength] = String(body.readableBytes)
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end(let trailers) where pending != nil:
            let body = Self.body(pending!)
            pending = nil
            context.write(wrapOutboundOut(.body(body)), promise: nil)
            context.write(wrapOutboundOut(.end(trailers)), promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }

    static func body(_ rejection: (status: Int, message: String)) -> ByteBuffer {
        let code = rejection.status == 401 ? "Unauthorized" : rejection.status == 403 ? "Forbidden" : "ConnectionRefused"
        return ByteBuffer(
            string: JSONValue.object([("error", .object([("code", .string(code)), ("message", .string(rejection.message))]))]).serialized)
    }
}
