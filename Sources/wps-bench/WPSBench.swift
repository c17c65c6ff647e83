import ArgumentParser
import BridgeJSON
import Foundation
import Logging
import NIOCore
import Synchronization
import WebPubSub

/// The Swift half of `make bench` (bench/bench.py drives it): WebSocket subscribers that count
/// and time what reaches them, the 1,000-client fan-out, and the REST load generator of the
/// ceiling. Each command prints one JSON object on stdout when it is done.
@main
struct WPSBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wps-bench",
        abstract: "Load and measurement tools for wps-bridge's benchmark.",
        subcommands: [Subscribe.self, FanOut.self, Ceiling.self])
}

struct HubOptions: ParsableArguments {
    @Option(help: "The hub's connection string.") var connectionString: String
    @Option(help: "Hub name.") var hub = "bench"
    @Option(help: "Group name.") var group = "bench"

    func clientURL(user: String) throws -> String {
        let cs = try ConnectionString(parsing: connectionString)
        return try ClientAccess.make(
            endpoint: cs.endpoint, hub: hub, key: cs.accessKey, userId: user, roles: [], groups: [group], expiresIn: .seconds(24 * 3600)
        ).url
    }
}

func emit(_ object: [(String, JSONValue)]) {
    FileHandle.standardOutput.write(Data((JSONValue.object(object).serialized + "\n").utf8))
}

func number(_ value: Double) -> JSONValue { .number(value.isFinite ? String(format: "%.3f", value) : "null") }

/// Connects subscribers, prints `{"ready":true}`, and waits until each has `--expect` messages.
struct Subscribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Subscribers of one group that count (and time) what they get.")
    @OptionGroup var hubOptions: HubOptions
    @Option(help: "WebSocket clients.") var clients = 10
    @Option(help: "Messages each client must get.") var expect: Int
    @Option(help: "Seconds to wait for them.") var timeout = 600
    @Flag(help: "Take each message's latency from its \"t\" field (ns since the epoch).") var latency = false
    @Option(help: "Check the order of lanes i % N (the bench's records of partition i % 4); 0: no check.") var lanes = 0

    func run() async throws {
        let subscribers = Subscribers(clients: clients, expect: expect, measureLatency: latency, lanes: lanes)
        let hubOptions = self.hubOptions
        try await withThrowingTaskGroup(of: Void.self) { group in
            try await subscribers.connect(url: { try hubOptions.clientURL(user: "sub-\($0)") }, group: &group)
            emit([("ready", .bool(true))])
            let complete = await subscribers.waitComplete(timeout: .seconds(timeout))
            let t = subscribers.snapshot
            var fields: [(String, JSONValue)] = [
                ("complete", .bool(complete)), ("clients", .number(String(clients))),
                ("received", .number(String(t.received.reduce(0, +)))),
                ("minReceived", .number(String(t.received.min() ?? 0))),
                ("maxReceived", .number(String(t.received.max() ?? 0))),
                ("first", number(t.first?.timeIntervalSince1970 ?? .nan)), ("last", number(t.last?.timeIntervalSince1970 ?? .nan)),
                ("frames", .number(String(t.frames))), ("outOfOrder", .number(String(t.outOfOrder))),
            ]
            if latency {
                let sorted = t.latencies.map { Double($0) / 1000 }.sorted()
                fields.append(("latencyCount", .number(String(sorted.count))))
                fields.append(("p50ms", number(percentile(sorted, 50))))
                fields.append(("p99ms", number(percentile(sorted, 99))))
                fields.append(("maxms", number(sorted.last ?? .nan)))
            }
            emit(fields)
            group.cancelAll()
        }
    }
}

/// 1,000 clients in one group; `--sends` REST sends one after another; the time until every
/// client has each.
struct FanOut: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fanout", abstract: "Time one REST send until every client of a group has it.")
    @OptionGroup var hubOptions: HubOptions
    @Option(help: "WebSocket clients.") var clients = 1000
    @Option(help: "Sends, one after another.") var sends = 100

    func run() async throws {
        let fanOutClients = FanOutClients(clients: clients)
        let hubOptions = self.hubOptions
        let service = WebPubSubServiceClient(connectionString: try ConnectionString(parsing: hubOptions.connectionString))
        var times: [Double] = []
        try await fanOutClients.connect(url: { try hubOptions.clientURL(user: "fan-\($0)") })
        for i in 0..<sends {
            let payload = ByteBuffer(string: #"{"i":\#(i),"pad":"\#(String(repeating: "x", count: 200))"}"#)
            let start = ContinuousClock.now
            try await service.sendToGroup(hub: hubOptions.hub, group: hubOptions.group, payload: payload, contentType: "application/json")
            guard let at = try await fanOutClients.completion(of: i, timeout: .seconds(30)) else {
                throw BenchError("send \(i) did not reach all \(clients) clients in 30 s (\(fanOutClients.count(of: i)) have it)")
            }
            times.append((at - start) / .milliseconds(1))
        }
        await fanOutClients.close()
        try await service.shutdown()
        let sorted = times.sorted()
        emit([
            ("clients", .number(String(clients))), ("sends", .number(String(sends))), ("p50ms", number(percentile(sorted, 50))),
            ("p99ms", number(percentile(sorted, 99))), ("maxms", number(sorted.last ?? .nan)),
        ])
    }
}

/// Posts `--messages` sends to a group with `--concurrency` requests at once: what the hub
/// accepts at most.
struct Ceiling: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Post messages straight to the hub's REST send endpoint.")
    @OptionGroup var hubOptions: HubOptions
    @Option(help: "Messages.") var messages = 200_000
    @Option(help: "Requests at once.") var concurrency = 64
    @Option(help: "Payload bytes.") var size = 256

    func run() async throws {
        var configuration = WebPubSubServiceClient.Configuration()
        configuration.maxConnections = concurrency
        let service = WebPubSubServiceClient(
            connectionString: try ConnectionString(parsing: hubOptions.connectionString), configuration: configuration)
        let counters = Counters()
        let hub = hubOptions.hub
        let group = hubOptions.group
        let messages = self.messages
        let size = self.size
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for _ in 0..<concurrency {
                tasks.addTask {
                    while true {
                        let i = counters.next.wrappingAdd(1, ordering: .relaxed).oldValue
                        guard i < messages else { return }
                        let payload = ByteBuffer(string: benchPayload(i, size: size))
                        do {
                            try await service.sendToGroup(hub: hub, group: group, payload: payload, contentType: "application/json")
                        } catch {
                            counters.failed.add(1, ordering: .relaxed)
                        }
                    }
                }
            }
            try await tasks.waitForAll()
        }
        let elapsed = (ContinuousClock.now - start) / .seconds(1)
        try await service.shutdown()
        emit([
            ("messages", .number(String(messages))), ("failed", .number(String(counters.failed.load(ordering: .relaxed)))),
            ("seconds", number(elapsed)), ("perSecond", number(Double(messages) / elapsed)),
        ])
    }
}

final class Counters: Sendable {
    let next = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
}

/// `{"i":N,"pad":"xxx…"}` of `size` bytes: what the benchmark's producers write too.
func benchPayload(_ i: Int, size: Int) -> String {
    let head = #"{"i":\#(i),"pad":""#
    return head + String(repeating: "x", count: max(0, size - head.utf8.count - 2)) + #""}"#
}
