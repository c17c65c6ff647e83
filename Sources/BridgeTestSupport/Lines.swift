import Synchronization

/// Lines collected by a test server's handler (what it accepted, say), read by the test.
package final class Lines: Sendable {
    private let lines = Mutex<[String]>([])
    package init() {}
    package func append(_ line: String) { lines.withLock { $0.append(line) } }
    package var all: [String] { lines.withLock { $0 } }
}
