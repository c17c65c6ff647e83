import AsyncHTTPClient
package import BridgeJSON
import Foundation
import NIOCore
import Synchronization

/// Headless Chromium (Debian's `chromium`) driven over the DevTools protocol: navigate, then
/// evaluate JavaScript in the page, as a person's browser would show it.
package final class Browser: Sendable {
    let process: Process
    let socket: TestWebSocket
    let profile: String
    private let nextId = Mutex(0)

    /// Starts Chromium with an empty page.
    package static func start() async throws -> Browser {
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            throw TestEnvironmentError("chromium is not installed; `make test` installs it (scripts/bootstrap --tests)")
        }
        let port = try TestEnvironment.freePort()
        let profile = try TestEnvironment.temporaryDirectory()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: chromium)
        process.arguments = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
            "--remote-debugging-port=\(port)", "--remote-allow-origins=*", "--user-data-dir=\(profile)", "about:blank",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Find the page's debugger WebSocket.
        var debuggerURL: String?
        for _ in 0..<200 where debuggerURL == nil {
            if let data = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/json"), timeout: .seconds(2)).body
                .collect(upTo: 1 << 20),
                case .array(let targets) = (try? JSONValue.parse(data.readableBytesView)) ?? .null
            {
                debuggerURL = targets.first { $0["type"] == .string("page") }?["webSocketDebuggerUrl"]?.stringValue
            }
            if debuggerURL == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        guard let debuggerURL else {
            process.terminate()
            throw TestEnvironmentError("chromium did not open its DevTools endpoint")
        }
        let socket = try await TestWebSocket.connect(debuggerURL)
        return Browser(process: process, socket: socket, profile: profile)
    }

    init(process: Process, socket: TestWebSocket, profile: String) {
        self.process = process
        self.socket = socket
        self.profile = profile
    }

    /// Sends a DevTools command and returns its `result`.
    @discardableResult
    package func command(_ method: String, _ params: [(String, JSONValue)] = []) async throws -> JSONValue {
        let id = nextId.withLock { n in
            n += 1
            return n
        }
        socket.send(json: .object([("id", .number(String(id))), ("method", .string(method)), ("params", .object(params))]))
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            guard let reply = await socket.nextJSON(timeout: deadline - ContinuousClock.now) else { break }
            if reply["id"] == .number(String(id)) {
                if let error = reply["error"] { throw TestEnvironmentError("\(method) failed: \(error.serialized)") }
                return reply["result"] ?? .null
            }
        }
        throw TestEnvironmentError("no answer to \(method)")
    }

    package func navigate(_ url: String) async throws {
        try await command("Page.navigate", [("url", .string(url))])
    }

    /// The value of a JavaScript expression in the page.
    package func evaluate(_ expression: String) async throws -> JSONValue {
        let result = try await command("Runtime.evaluate", [("expression", .string(expression)), ("returnByValue", .bool(true))])
        return result["result"]?["value"] ?? .null
    }

    /// Evaluates `expression` until it is true, for `timeout` at most.
    package func waitFor(_ expression: String, timeout: Duration = .seconds(15)) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await evaluate(expression) == .bool(true) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    /// A PNG of the page, base64.
    package func screenshot() async throws -> String? {
        try await command("Page.captureScreenshot")["data"]?.stringValue
    }

    package func close() async {
        await socket.close()
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: profile)
    }
}
