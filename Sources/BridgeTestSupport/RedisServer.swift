import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `redis-server` on a loopback port for tests: no persistence, stopped with `stop()`, and
/// started again on the same port with `restart()`.
package final class RedisServer: Sendable {
    package let port: Int
    package var url: String { "redis://127.0.0.1:\(port)" }
    /// The TLS port, when started with `tls`; the plain port stays open for `redis-cli`.
    package let tlsPort: Int?
    private let process: Mutex<ChildProcess?>
    private let arguments: [String]

    /// An ACL user: `name` with `password`, allowed every command and key.
    package struct User: Sendable {
        package var name: String
        package var password: String
        package init(_ name: String, password: String) {
            self.name = name
            self.password = password
        }
    }

    /// - Parameters:
    ///   - tls: serve TLS too, with this PKI's server certificate.
    ///   - clientCertificates: over TLS, require a client certificate signed by the PKI's CA.
    ///   - bind: addresses to listen on.
    package init(
        port: Int? = nil, password: String? = nil, tls: TestPKI? = nil, clientCertificates: Bool = false, users: [User] = [],
        bind: [String] = ["127.0.0.1"]
    ) async throws {
        let port = try port ?? TestEnvironment.freePort()
        self.port = port
        var arguments = ["--port", String(port), "--bind"] + bind + ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        if let password { arguments += ["--requirepass", password] }
        for user in users { arguments += ["--user", user.name, "on", ">\(user.password)", "~*", "&*", "+@all"] }
        if let tls {
            let tlsPort = try TestEnvironment.freePort()
            self.tlsPort = tlsPort
            arguments += [
                "--tls-port", String(tlsPort), "--tls-cert-file", tls.certFile, "--tls-key-file", tls.keyFile, "--tls-ca-cert-file", tls.caFile,
                "--tls-auth-clients", clientCertificates ? "yes" : "no",
            ]
        } else {
            tlsPort = nil
        }
        self.arguments = arguments
        process = Mutex(nil)
        try await start()
    }

    private func start() async throws {
        let child = try ChildProcess(try Self.executable("redis-server"), arguments)
        process.withLock { $0 = child }
        for port in [port] + (tlsPort.map { [$0] } ?? []) {
            guard await eventually(timeout: .seconds(20), { TestEnvironment.isListening(port) }) else {
                child.kill()
                throw TestEnvironmentError("redis-server did not listen on port \(port)")
            }
        }
    }

    /// SIGSTOP: the server keeps its sockets (connections are accepted by the kernel) and answers
    /// nothing, as a hung server does.
    package func suspend() { process.withLock { $0 }?.signal(SIGSTOP) }

    /// SIGCONT after `suspend()`.
    package func resume() { process.withLock { $0 }?.signal(SIGCONT) }

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
