package import BridgeJSON
import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket
import Synchronization

/// A WebSocket client for tests: connects (with a subprotocol), records every frame it gets,
/// sends what it is told. Frames arrive through ``next(timeout:)``.
package final class TestWebSocket: Sendable {
    package enum Frame: Sendable, Equatable {
        case text(String)
        case binary([UInt8])
        /// The server closed the socket (with this code, if it sent one).
        case closed(UInt16?)
    }

    enum Command: Sendable {
        case text(String)
        case binary([UInt8])
        case close(UInt16)
    }

    final class Shared: Sendable {
        /// Frames received and not read yet.
        let frames = Mutex<[Frame]>([])
        /// Set when the handshake failed.
        let failure = Mutex<String?>(nil)
        /// Set once the handshake succeeded.
        let opened = Mutex(false)
    }

    private let shared = Shared()
    private let commands: AsyncStream<Command>.Continuation
    private let task: Task<Void, Never>

    /// Connects to `url`; throws when the handshake is refused.
    package static func connect(_ url: String, subprotocol: String? = nil, maxFrameSize: Int = 4 * 1024 * 1024) async throws -> TestWebSocket {
        let socket = TestWebSocket(url: url, subprotocol: subprotocol, maxFrameSize: maxFrameSize)
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if socket.shared.opened.withLock({ $0 }) { return socket }
            if let failure = socket.shared.failure.withLock({ $0 }) { throw TestEnvironmentError("WebSocket connect failed: \(failure)") }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw TestEnvironmentError("WebSocket connect timed out")
    }

    private init(url: String, subprotocol: String?, maxFrameSize: Int) {
        let (commandStream, commands) = AsyncStream<Command>.makeStream()
        self.commands = commands
        let shared = self.shared
        let deliver: @Sendable (Frame) -> Void = { frame in shared.frames.withLock { $0.append(frame) } }
        var headers = HTTPFields()
        if let subprotocol { headers[.secWebSocketProtocol] = subprotocol }
        let configuration = WebSocketClientConfiguration(maxFrameSize: maxFrameSize, additionalHeaders: headers)
        task = Task {
            var logger = Logger(label: "test-websocket")
            logger.logLevel = .critical
            do {
                let close = try await WebSocketClient.connect(url: url, configuration: configuration, logger: logger) { inbound, outbound, _ in
                    shared.opened.withLock { $0 = true }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for try await message in inbound.messages(maxSize: maxFrameSize) {
                                switch message {
                                case .text(let s): deliver(.text(s))
                                case .binary(let b): deliver(.binary(Array(b.readableBytesView)))
                                }
                            }
                        }
                        group.addTask {
                            for await command in commandStream {
                                switch command {
                                case .text(let s): try await outbound.write(.text(s))
                                case .binary(let b): try await outbound.write(.binary(ByteBuffer(bytes: b)))
                                case .close(let code):
                                    try await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: nil)
                                    return
                                }
                            }
                        }
                        // Whichever ends first (the server closed, or we did) ends the socket.
                        _ = try await group.next()
                        group.cancelAll()
                    }
                }
                deliver(.closed(close.map { UInt16(webSocketErrorCode: $0.closeCode) }))
                if !shared.opened.withLock({ $0 }) { shared.failure.withLock { $0 = "the handshake did not complete" } }
            } catch {
                shared.failure.withLock { $0 = "\(error)" }
                deliver(.closed(nil))
            }
        }
    }

    package func send(_ text: String) { commands.yield(.text(text)) }
    package func send(binary: [UInt8]) { commands.yield(.binary(binary)) }
    package func send(json: JSONValue) { commands.yield(.text(json.serialized)) }

    /// Closes from our side (1000, normal closure, unless told otherwise) and waits until the socket is gone.
    package func close(code: UInt16 = 1000) async {
        commands.yield(.close(code))
        commands.finish()
        await task.value
    }

    /// The next frame, or nil after `timeout`.
    package func next(timeout: Duration = .seconds(10)) async -> Frame? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let frame: Frame? = shared.frames.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            if let frame { return frame }
            if ContinuousClock.now >= deadline { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Frames received so far and not read, without waiting.
    package func drain() -> [Frame] {
        shared.frames.withLock { m in
            defer { m.removeAll() }
            return m
        }
    }

    /// The next text frame parsed as JSON (skipping nothing); nil on timeout or another frame.
    package func nextJSON(timeout: Duration = .seconds(10)) async -> JSONValue? {
        guard case .text(let s) = await next(timeout: timeout) else { return nil }
        return try? JSONValue(parsing: s)
    }

    /// Reads frames until one is a JSON object whose `type` is `type` (and, for system
    /// messages, `event` is `event`); returns it.
    package func expect(type: String, event: String? = nil, timeout: Duration = .seconds(10)) async -> JSONValue? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard let frame = await next(timeout: deadline - ContinuousClock.now) else { return nil }
            guard case .text(let s) = frame, let json = try? JSONValue(parsing: s) else {
                if case .closed = frame { return nil }
                continue
            }
            if json["type"]?.stringValue == type, event == nil || json["event"]?.stringValue == event { return json }
        }
        return nil
    }
}
