import Foundation
import Synchronization

/// `redis-server` on a loopback port for tests: no persistence, stopped with `stop()`, and
/// started again on the same port with `restart()`.
package final class RedisServer: Sendable {
    package let port: Int
    package var url: String { "redis://127.0.0.1:\(port)" }
    private let process: Mutex<ChildProcess?>
    private let arguments: [String]

    package init(port: Int? = nil, password: String? = nil) async throws {
        let port = try port ?? TestEnvironment.freePort()
        self.port = port
        var arguments = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        if let password { arguments += ["--requirepass", password] }
        self.arguments = arguments
        process = Mutex(nil)
        try await start()
    }

    private func start() async throws {
        let child = try ChildProcess(try Self.executable("redis-server"), arguments)
        process.withLock { $0 = child }
        let port = self.port
        guard await eventually(timeout: .seconds(20), { TestEnvironment.isListening(port) }) else {
            child.kill()
            throw TestEnvironmentError("redis-server did not listen on port \(port)")
        }
    }

    package func stop() async {
        guard
            let child = process.withLock({ p in
                defer { p = nil }
                return p
            })
        else { return }
        child.kill()
        _ = await child.exitStatus()
    }

    /// Stops the server (its data is lost) and starts a new one on the same port.
    package func restart() async throws {
        await stop()
        try await start()
    }

    /// Runs `redis-cli` against this server; returns its output (raw replies, one per line).
    package func cli(_ args: String...) async throws -> String {
        try await cli(args)
    }

    package func cli(_ args: [String]) async throws -> String {
        let result = try await runProcess(try Self.executable("redis-cli"), ["-p", String(port), "--no-raw"] + args)
        guard result.status == 0 else { throw TestEnvironmentError("redis-cli \(args) failed: \(result.stderr)") }
        return result.stdout
    }

    /// Runs `redis-cli --raw`: bulk strings as they are.
    package func raw(_ args: [String]) async throws -> String {
        let result = try await runProcess(try Self.executable("redis-cli"), ["-p", String(port), "--raw"] + args)
        guard result.status == 0 else { throw TestEnvironmentError("redis-cli \(args) failed: \(result.stderr)") }
        return result.stdout
    }

    static func executable(_ name: String) throws -> String {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        throw TestEnvironmentError("\(name) is not installed; run `make test`, which installs redis-server and redis-tools")
    }
}
