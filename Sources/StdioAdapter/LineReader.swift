import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads lines from a file descriptor without blocking Swift's cooperative threads: each read
/// happens on NIO's blocking thread pool, polling so that cancellation is seen within 100 ms.
/// Works for pipes, terminals and regular files alike.
final class LineReader: Sendable {
    struct Line: Sendable {
        /// 1-based.
        let number: Int
        let bytes: [UInt8]
        /// Longer than the limit: `bytes` holds only the start.
        let truncated: Bool
    }

    private struct State {
        var buffer: [UInt8] = []
        var start = 0
        var lineNumber = 0
        var eof = false
        var skippingLongLine = false
    }

    private let fd: Int32
    private let maxLineBytes: Int
    /// A thread of its own: a read waits as long as stdin is quiet, and must not hold one of
    /// the shared pool's threads (which the file and stdout sinks use) meanwhile.
    private let pool: NIOThreadPool
    private let state = Mutex(State())
    private let cancelled = Atomic<Bool>(false)

    init(fd: Int32, maxLineBytes: Int) {
        self.fd = fd
        self.maxLineBytes = maxLineBytes
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
    }

    deinit {
        pool.shutdownGracefully { _ in }
    }

    /// The next line (without its `\n` or `\r\n`), nil at end of input.
    /// - Throws: `CancellationError`, or the read error.
    func next() async throws -> Line? {
        while true {
            if let line = takeLine() { return line }
            if state.withLock({ $0.eof }) { return takeRest() }
            try Task.checkCancellation()
            let chunk = try await withTaskCancellationHandler {
                try await pool.runIfActive { [self] in
                    try readChunk()
                }
            } onCancel: {
                self.cancelled.store(true, ordering: .relaxed)
            }
            // Keep what was read even when cancelled now: those lines are still handed out.
            state.withLock { s in
                if chunk.isEmpty {
                    s.eof = true
                } else {
                    if s.start > 0, s.start >= s.buffer.count / 2 {
                        s.buffer.removeFirst(s.start)
                        s.start = 0
                    }
                    s.buffer.append(contentsOf: chunk)
                }
            }
        }
    }

    private func takeLine() -> Line? {
        state.withLock { s in
            while true {
                guard let newline = s.buffer[s.start...].firstIndex(of: UInt8(ascii: "\n")) else {
                    // A line longer than the limit: hand out its start now, skip the rest later.
                    if !s.skippingLongLine, s.buffer.count - s.start > maxLineBytes {
                        s.lineNumber += 1
                        let bytes = Array(s.buffer[s.start..<(s.start + maxLineBytes)])
                        s.buffer.removeAll(keepingCapacity: true)
                        s.start = 0
                        s.skippingLongLine = true
                        return Line(number: s.lineNumber, bytes: bytes, truncated: true)
                    }
                    if s.skippingLongLine {
                        s.buffer.removeAll(keepingCapacity: true)
                        s.start = 0
                    }
                    return nil
                }
                let lineStart = s.start
                s.start = newline + 1
                if s.skippingLongLine {
                    s.skippingLongLine = false
                    continue
                }
                s.lineNumber += 1
                var end = newline
                if end > lineStart, s.buffer[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                if end - lineStart > maxLineBytes {
                    return Line(number: s.lineNumber, bytes: Array(s.buffer[lineStart..<(lineStart + maxLineBytes)]), truncated: true)
                }
                return Line(number: s.lineNumber, bytes: Array(s.buffer[lineStart..<end]), truncated: false)
            }
        }
    }

    private func takeRest() -> Line? {
        state.withLock { s in
            defer {
                s.buffer.removeAll()
                s.start = 0
            }
            guard s.start < s.buffer.count, !s.skippingLongLine else { return nil }
            s.lineNumber += 1
            var bytes = Array(s.buffer[s.start...])
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
            let truncated = bytes.count > maxLineBytes
            return Line(number: s.lineNumber, bytes: truncated ? Array(bytes.prefix(maxLineBytes)) : bytes, truncated: truncated)
        }
    }

    /// Blocks (on a pool thread) until data, end of input or cancellation.
    private func readChunk() throws -> [UInt8] {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while true {
            if cancelled.load(ordering: .relaxed) { throw CancellationError() }
            let ready = poll(&pfd, 1, 100)
            if ready < 0 {
                if errno == EINTR { continue }
                throw ReadError(errno: errno)
            }
            if ready == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 64 * 1024)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw ReadError(errno: errno)
            }
            chunk.removeSubrange(n...)
            return chunk
        }
    }
}

struct ReadError: Error, CustomStringConvertible {
    let errno: Int32
    var description: String { "read failed: \(String(cString: strerror(errno)))" }
}
