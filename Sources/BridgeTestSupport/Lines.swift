import Synchronization

/// Lines collected by a test server's handler (what it accepted, say), read by the test.
public final class Lines: Sendable {
    private let lines = Mutex<[String]>([])
    public init() {}
    public func append(_ line: String) { lines.withLock { $0.append(line) } }
    public var all: [String] { lines.withLock { $0 } }
}
