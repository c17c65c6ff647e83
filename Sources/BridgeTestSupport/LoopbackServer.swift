import Hummingbird
import Logging
import Synchronization

/// A Hummingbird server on a free loopback port, for the test servers (the recording Web
/// PubSub stand-in, the identity provider): started, its port known, stopped.
final class LoopbackServer: Sendable {
    private let boundPort = Mutex<Int?>(nil)
    private let task = Mutex<Task<Void, any Error>?>(nil)

    var port: Int { boundPort.withLock { $0 ?? 0 } }

    /// Starts answering with `respond` on `port` (0: a free one); returns once the port is known.
    func start(label: String, port: Int = 0, respond: @escaping @Sendable (Request) async throws -> Response) async throws {
        let (portStream, portContinuation) = AsyncStream<Int>.makeStream()
        var logger = Logger(label: label)
        logger.logLevel = .critical
        let app = Application(
            responder: CallbackResponder<BasicRequestContext> { request, _ in try await respond(request) },
            configuration: .init(address: .hostname("127.0.0.1", port: port)),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: logger)
        let runTask = Task { try await app.run() }
        task.withLock { $0 = runTask }
        for await port in portStream {
            boundPort.withLock { $0 = port }
            return
        }
        throw RecordingServerError("\(label) did not start")
    }

    func stop() async {
        let t = task.withLock { $0 }
        t?.cancel()
        _ = try? await t?.value
    }
}
