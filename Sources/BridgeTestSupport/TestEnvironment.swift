package import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where tests find what `make test` prepared. Nothing is skipped: a missing piece is an error
/// that says how to provide it.
package enum TestEnvironment {
    /// The package's root folder.
    package static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The built `wps-bridge` executable: `$WPS_BRIDGE_BIN`, or next to the test bundle.
    package static func bridgeBinary() throws -> String {
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["WPS_BRIDGE_BIN"] { candidates.append(env) }
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        candidates.append(runner.appendingPathComponent("wps-bridge").path)
        candidates.append(runner.deletingLastPathComponent().appendingPathComponent("wps-bridge").path)
        candidates.append(packageRoot + "/.build/debug/wps-bridge")
        for path in candidates where FileManager.default.isExecutableFile(atPath: path) {
            // Absolute, so that tests may start it from another working directory.
            return URL(fileURLWithPath: path).standardizedFileURL.path
        }
        throw TestEnvironmentError("wps-bridge is not built (looked at \(candidates.joined(separator: ", "))); run `swift build` or `make test`")
    }

    /// The Python of the virtualenv that `make test` creates with the official Azure SDKs:
    /// `$WPS_TEST_PYTHON`, or `.venv/bin/python` in the package.
    package static func python() throws -> String {
        let candidates = [ProcessInfo.processInfo.environment["WPS_TEST_PYTHON"], packageRoot + "/.venv/bin/python"].compactMap { $0 }
        for path in candidates where FileManager.default.isExecutableFile(atPath: path) { return path }
        throw TestEnvironmentError(
            "no Python with the Azure SDKs (looked at \(candidates.joined(separator: ", "))); run `make test`, which creates .venv")
    }

    /// A loopback port that was free a moment ago (bound to port 0, then closed).
    package static func freePort() throws -> Int {
        let (port, socket) = try refusingPort()
        close(socket)
        return port
    }

    /// A loopback port that refuses connections for as long as the returned socket is open: it
    /// is bound and not listening, so no other test's server can take it meanwhile (a port that
    /// was merely free a moment ago can be). Close the socket when done.
    package static func refusingPort() throws -> (port: Int, socket: Int32) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestEnvironmentError("socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        let named = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        guard bound == 0, named == 0 else {
            close(fd)
            throw TestEnvironmentError("bind() or getsockname() failed")
        }
        return (Int(UInt16(bigEndian: address.sin_port)), fd)
    }

    /// Whether something accepts TCP connections on the loopback port.
    package static func isListening(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// A fresh temporary folder.
    package static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "wps-bridge-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

package struct TestEnvironmentError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// The result of a finished child process.
package struct ProcessResult: Sendable {
    package let status: Int32
    package let stdout: String
    package let stderr: String
}

/// Runs a program to completion with `input` on its stdin; kills it after `timeout`.
package func runProcess(
    _ executable: String, _ arguments: [String], input: String = "", environment: [String: String] = [:],
    currentDirectory: String? = nil, timeout: TimeInterval = 60
) async throws -> ProcessResult {
    let stdout = Pipe()
    let stderr = Pipe()
    let child = try ChildProcess(executable, arguments, environment: environment, currentDirectory: currentDirectory, stdout: stdout, stderr: stderr)
    // Read both pipes on their own threads so that a full pipe never blocks the child.
    let outData = readAll(stdout.fileHandleForReading)
    let errData = readAll(stderr.fileHandleForReading)
    child.write(input)
    child.closeInput()
    let killer = Task {
        try await Task.sleep(for: .seconds(timeout))
        child.terminate()
    }
    let status = await child.exitStatus()
    killer.cancel()
    return ProcessResult(
        status: status, stdout: String(decoding: await outData.value, as: UTF8.self), stderr: String(decoding: await errData.value, as: UTF8.self))
}

/// Reads to end of file on a thread of its own (a blocking read must not hold one of the few
/// threads of Swift's cooperative pool), then closes the handle.
package func readAll(_ handle: FileHandle) -> Task<Data, Never> {
    let (stream, continuation) = AsyncStream<Data>.makeStream()
    let thread = Thread {
        let data = handle.readDataToEndOfFile()
        // Closed here, not when the handle is freed: the thread keeps its closure (and so the
        // handle) alive, and each run of `runProcess` left two descriptors open (TestSupportTests).
        try? handle.close()
        continuation.yield(data)
        continuation.finish()
    }
    thread.start()
    return Task {
        var data = Data()
        for await chunk in stream { data = chunk }
        return data
    }
}

/// A running child process whose stdin the test writes and whose exit it awaits.
package final class ChildProcess: Sendable {
    let process: Process
    let input: FileHandle
    private let exited: AsyncStream<Int32>

    /// Starts `executable`; stdout and stderr go nowhere unless pipes are given.
    package init(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:], currentDirectory: String? = nil,
        stdout: Pipe? = nil, stderr: Pipe? = nil
    ) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let stdin = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout ?? FileHandle.nullDevice
        process.standardError = stderr ?? FileHandle.nullDevice
        input = stdin.fileHandleForWriting
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        exited = stream
        process.terminationHandler = { p in
            continuation.yield(p.terminationStatus)
            continuation.finish()
        }
        try process.run()
    }

    package func write(_ text: String) { input.write(Data(text.utf8)) }

    /// Ends stdin (EOF for the child).
    package func closeInput() { try? input.close() }

    /// SIGTERM.
    package func terminate() { if process.isRunning { process.terminate() } }

    /// SIGKILL: no chance to clean up, as in a crash.
    package func kill() { if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) } }

    /// Any signal, e.g. SIGHUP.
    package func signal(_ number: Int32) { if process.isRunning { Glibc.kill(process.processIdentifier, number) } }

    package var isRunning: Bool { process.isRunning }

    /// The exit status, once it has exited.
    package func exitStatus() async -> Int32 {
        var status: Int32 = -1
        for await s in exited { status = s }
        return status
    }

    deinit {
        if process.isRunning { process.terminate() }
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held. Tests wait
/// for a state this way instead of sleeping a fixed time, which a loaded CI machine outruns.
package func eventually(
    timeout: Duration = .seconds(30), every interval: Duration = .milliseconds(20),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: interval)
    }
}
