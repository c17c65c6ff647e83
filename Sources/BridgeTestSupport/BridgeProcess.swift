package import BridgeJSON
import Foundation

/// `wps-bridge run` on a config written to a fresh folder, its debug log kept in that folder.
package struct BridgeProcess: Sendable {
    package let directory: String
    package let process: ChildProcess

    /// Writes `yaml` to `directory/bridge.yaml` and starts the bridge on it.
    package init(_ yaml: String, in directory: String, logLevel: String = "debug") throws {
        self.directory = directory
        let config = directory + "/bridge.yaml"
        try yaml.write(toFile: config, atomically: true, encoding: .utf8)
        let bin = try TestEnvironment.bridgeBinary()
        // exec: the pid is the bridge's, so that kill() reaches it.
        process = try ChildProcess(
            "/bin/sh", ["-c", "exec '\(bin)' run -c '\(config)' --log-level \(logLevel) 2>>'\(directory)/bridge.log'"], currentDirectory: directory)
    }

    /// What the bridge logged so far.
    package var log: String { (try? String(contentsOfFile: directory + "/bridge.log", encoding: .utf8)) ?? "" }

    /// The last lines of the log, for failure messages.
    package var logTail: String { String(log.suffix(6000)) }

    package func terminate() { process.terminate() }
    package func signal(_ number: Int32) { process.signal(number) }
    /// Writes to the bridge's stdin.
    package func write(_ text: String) { process.write(text) }
    package func kill() { process.kill() }
    package var isRunning: Bool { process.isRunning }
    package func exitStatus() async -> Int32 { await process.exitStatus() }
}

extension TestWebSocket {
    /// Reads `message`s until `count` arrived or none came for `idle`.
    package func messages(_ count: Int, idle: Duration = .seconds(30)) async -> [JSONValue] {
        var got: [JSONValue] = []
        while got.count < count, let m = await expect(type: "message", timeout: idle) { got.append(m) }
        return got
    }
}
