package import BridgeConfig
package import BridgeCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Writes lines to a file descriptor, one write at a time, on NIO's blocking pool. A path is
/// opened (for appending, created if missing) at the first write, so that building a sink, as
/// `validate` does, opens nothing.
final class DescriptorWriter: Sendable {
    enum Target: Sendable {
        case descriptor(Int32)
        case path(String)
    }

    let target: Target
    private let fd = Mutex<Int32?>(nil)

    init(_ target: Target) {
        self.target = target
        if case .descriptor(let d) = target { fd.withLock { $0 = d } }
    }

    func write(_ line: String) async throws {
        try await NIOThreadPool.singleton.runIfActive { [self] in
            try fd.withLock { fd in
                if fd == nil, case .path(let path) = target {
                    let opened = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
                    guard opened >= 0 else { throw WriteError(errno: errno, path: path) }
                    fd = opened
                }
                guard let descriptor = fd else { throw WriteError(errno: EBADF, path: nil) }
                var bytes = Array(line.utf8)[...]
                while !bytes.isEmpty {
                    let n = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw WriteError(errno: errno, path: nil)
                    }
                    bytes = bytes.dropFirst(n)
                }
            }
        }
    }

    /// Flushes to disk and, for a path, closes it.
    func close() async throws {
        try await NIOThreadPool.singleton.runIfActive { [self] in
            try fd.withLock { fd in
                guard let descriptor = fd else { return }
                if fsync(descriptor) != 0, errno != EINVAL, errno != EROFS { throw WriteError(errno: errno, path: nil) }
                if case .path = target {
                    _ = Glibc.close(descriptor)
                    fd = nil
                }
            }
        }
    }
}

struct WriteError: Error, CustomStringConvertible {
    let errno: Int32
    let path: String?
    var description: String { (path.map { "cannot open \($0): " } ?? "") + String(cString: strerror(errno)) }
}

/// `type: stdout`: one NDJSON envelope per record on standard output.
package struct StdoutSink: SinkAdapter {
    let writer = DescriptorWriter(.descriptor(1))

    package init() {}

    package var description: String { "stdout" }

    package func write(_ record: SinkRecord) async throws {
        try await writer.write(NDJSONEnvelope.encode(record))
    }
}

/// `type: file`: appends one NDJSON envelope per record to `path`.
package struct FileSink: SinkAdapter {
    package let path: String
    let writer: DescriptorWriter

    /// `path` is opened (created if missing) at the first write.
    package init(path: String) {
        self.path = path
        writer = DescriptorWriter(.path(path))
    }

    package var description: String { "file \(path)" }

    package func write(_ record: SinkRecord) async throws {
        try await writer.write(NDJSONEnvelope.encode(record))
    }

    package func close() async throws {
        try await writer.close()
    }
}

/// `type: stdout` for dead letters.
package struct StdoutSinkFactory: SinkFactory {
    package init() {}
    package var typeName: String { "stdout" }
    package var summary: String { "standard output, one NDJSON envelope per record" }

    package func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)? {
        settings.checkKeys([], what: "a stdout sink")
        return StdoutSink()
    }
}

/// `type: file` for dead letters.
package struct FileSinkFactory: SinkFactory {
    package init() {}
    package var typeName: String { "file" }
    package var summary: String { "appends one NDJSON envelope per record to a file (path)" }

    package func makeSink(settings: ConfigMapping, context: AdapterContext) -> (any SinkAdapter)? {
        settings.checkKeys(["path"], what: "a file sink")
        guard let path = settings.nonEmptyString("path", required: true) else { return nil }
        let full = settings.reader.absolutePath(path)
        let folder = full.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if access(folder.isEmpty ? "/" : folder, W_OK) != 0 {
            settings.value("path")?.report("cannot write to the folder of '\(path)': \(String(cString: strerror(errno)))")
            return nil
        }
        return FileSink(path: full)
    }
}
