import BridgeJSON
import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import Synchronization
import WebPubSub

/// WebSocket clients of one group, on `json.webpubsub.azure.v1`, that count what they get.
///
/// Each frame is a JSON object; the bench's payloads carry `"i"` (a sequence number) and may carry
/// `"t"` (the producer's wall clock in nanoseconds), from which the latency is taken. A frame whose
/// data is an array (a batch of the bridge) counts as its elements.
final class Subscribers: Sendable {
    struct Tally {
        var received: [Int]
        /// Frames of the first client (fewer than its messages when they come in batches).
        var frames = 0
        /// Messages of the first client that came after a later one of their lane (`i % lanes`).
        var outOfOrder = 0
        var lastOfLane: [Int: Int] = [:]
        var complete = 0
        var first: Date?
        var last: Date?
        /// Latency of each message at the first client, in microseconds.
        var latencies: [Int64] = []
        var connected = 0
        var failures: [String] = []
    }

    let clients: Int
    let expect: Int
    let measureLatency: Bool
    /// Lanes whose order is checked (`i % lanes`); 0: none.
    let lanes: Int
    private let tally: Mutex<Tally>
    private let finished: AsyncStream<Void>.Continuation
    let finishedStream: AsyncStream<Void>

    init(clients: Int, expect: Int, measureLatency: Bool, lanes: Int = 0) {
        self.lanes = lanes
        self.clients = clients
        self.expect = expect
        self.measureLatency = measureLatency
        tally = Mutex(Tally(received: Array(repeating: 0, count: clients)))
        (finishedStream, finished) = AsyncStream.makeStream()
    }

    var snapshot: Tally { tally.withLock { $0 } }

    /// Connects every client (in batches, so that the hub is not flooded with handshakes) and
    /// runs them until `stop` is cancelled. Returns once all are connected; the sockets go on in `group`.
    func connect(url: @escaping @Sendable (Int) throws -> String, group: inout ThrowingTaskGroup<Void, any Error>) async throws {
        for index in 0..<clients {
            let target = try url(index)
            group.addTask { try await self.run(index: index, url: target) }
            if index % 50 == 49 {
                try await waitConnected(index + 1, timeout: .seconds(30))
            }
        }
        try await waitConnected(clients, timeout: .seconds(60))
    }

    private func waitConnected(_ count: Int, timeout: Duration) async throws {
        try await waitUntilConnected(count, of: "subscriber", timeout: timeout) { tally.withLock { ($0.connected, $0.failures) } }
    }

    /// Waits until every client has `expect` messages, or `timeout`.
    func waitComplete(timeout: Duration) async -> Bool {
        if tally.withLock({ $0.complete }) >= clients { return true }
        return await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await _ in self.finishedStream { return true }
                return false
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || self.tally.withLock { $0.complete } >= self.clients
        }
    }

    private func run(index: Int, url: String) async throws {
        var headers = HTTPFields()
        headers[.secWebSocketProtocol] = "json.webpubsub.azure.v1"
        var logger = Logger(label: "wps-bench")
        logger.logLevel = .critical
        let configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 20, additionalHeaders: headers)
        do {
            _ = try await WebSocketClient.connect(url: url, configuration: configuration, logger: logger) { inbound, _, _ in
                for try await message in inbound.messages(maxSize: 1 << 20) {
                    guard case .text(let text) = message else { continue }
                    self.receive(index: index, text)
                }
            }
        } catch is CancellationError {
        } catch {
            tally.withLock { $0.failures.append("\(error)") }
        }
    }

    private func receive(index: Int, _ text: String) {
        guard let frame = try? JSONValue(parsing: text), frame["type"]?.stringValue == "message" else {
            if text.contains("\"connected\"") { tally.withLock { $0.connected += 1 } }
            return
        }
        let items: [JSONValue]
        switch frame["data"] {
        case .array(let elements)?: items = elements
        case let data?: items = [data]
        case nil: items = []
        }
        var latencies: [Int64] = []
        var sequence: [Int] = []
        if index == 0 {
            let now = Int64(Date().timeIntervalSince1970 * 1e9)
            for item in items {
                if measureLatency, let stamp = item["t"]?.int64Value { latencies.append((now - stamp) / 1000) }
                if lanes > 0, let i = item["i"]?.intValue { sequence.append(i) }
            }
        }
        let now = Date()
        let done: Bool = tally.withLock { t in
            let before = t.received[index]
            t.received[index] += items.count
            if t.first == nil { t.first = now }
            t.last = now
            if index == 0 {
                t.frames += 1
                t.latencies += latencies
                for i in sequence {
                    if let last = t.lastOfLane[i % lanes], i <= last { t.outOfOrder += 1 }
                    t.lastOfLane[i % lanes] = i
                }
            }
            guard before < expect, t.received[index] >= expect else { return false }
            t.complete += 1
            return t.complete == clients
        }
        if done { finished.yield() }
    }
}

extension JSONValue {
    var intValue: Int? {
        if case .number(let text) = self { return Int(text) }
        return nil
    }

    var int64Value: Int64? {
        if case .number(let text) = self { return Int64(text) }
        return nil
    }
}

/// Waits until `state` counts `count` connected clients; throws when one failed, or after `timeout`.
func waitUntilConnected(
    _ count: Int, of what: String, timeout: Duration, _ state: () -> (connected: Int, failures: [String])
) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        let (connected, failures) = state()
        if let failure = failures.first { throw BenchError("a \(what) failed: \(failure)") }
        if connected >= count { return }
        if ContinuousClock.now > deadline { throw BenchError("only \(connected) of \(count) \(what)s connected") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Percentiles of a sample, nearest rank.
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
    return sorted[min(max(rank, 0), sorted.count - 1)]
}
