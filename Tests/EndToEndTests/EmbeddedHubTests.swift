import BridgeJSON
import BridgeTestSupport
import Foundation
import NIOCore
import Testing
import WebPubSub

/// The main job: `wps-bridge run` with `webpubsub: embedded`, stdin in, a browser-like
/// WebSocket subscriber out; and `wps-bridge hub` on its own.
@Suite(.serialized) struct EmbeddedHubTests {
    @Test func linesTypedOnStdinReachASubscriberOfTheGroup() async throws {
        let port = try TestEnvironment.freePort()
        let key = "e2e-key-0123456789ABCDEFGHIJKLMNOPQRSTUV"
        let bridge = try ChildProcess(
            try TestEnvironment.bridgeBinary(), ["run", "--config", TestEnvironment.packageRoot + "/bridge.yaml.example"],
            environment: ["WPS_HUB_PORT": String(port), "WPS_HUB_KEY": key], currentDirectory: try TestEnvironment.temporaryDirectory())

        let cs = try ConnectionString(parsing: "Endpoint=http://127.0.0.1;Port=\(port);AccessKey=\(key);Version=1.0;")
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: "browser", roles: ["webpubsub.joinLeaveGroup.demo"], groups: [],
            expiresIn: .seconds(600))
        var socket: TestWebSocket?
        for _ in 0..<100 where socket == nil {
            socket = try? await TestWebSocket.connect(access.url, subprotocol: "json.reliable.webpubsub.azure.v1")
            if socket == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let subscriber = try #require(socket, "the embedded hub did not come up")
        #expect(await subscriber.expect(type: "system", event: "connected") != nil)
        subscriber.send(#"{"type":"joinGroup","group":"demo","ackId":1}"#)
        #expect(await subscriber.expect(type: "ack")?["success"] == .bool(true))

        bridge.write("hello from stdin\nsecond line\n")
        let first = await subscriber.expect(type: "message")
        let second = await subscriber.expect(type: "message")
        #expect(first?["group"] == .string("demo") && first?["dataType"] == .string("text") && first?["data"] == .string("hello from stdin"))
        #expect(second?["data"] == .string("second line") && second?["sequenceId"] == .number("2"))

        bridge.closeInput()
        #expect(await bridge.exitStatus() == 0)
    }

    /// The key from a file (`--access-key-file`), from `WPS_HUB_KEY`, or on the command line
    /// (which still works, with a warning that ps shows it).
    @Test(arguments: ["file", "environment", "argument"])
    func hubCommandPrintsItsConnectionStringFirst(keyFrom: String) async throws {
        let stdout = Pipe()
        let stderr = Pipe()
        let dir = try TestEnvironment.temporaryDirectory()
        try "cli-key-0123456789\n".write(toFile: dir + "/key", atomically: true, encoding: .utf8)
        let arguments: [String] =
            switch keyFrom {
            case "file": ["--access-key-file", dir + "/key"]
            case "argument": ["--access-key", "cli-key-0123456789"]
            default: []
            }
        let hub = try ChildProcess(
            try TestEnvironment.bridgeBinary(), ["hub", "--port", "0", "--log-format", "text"] + arguments,
            environment: keyFrom == "environment" ? ["WPS_HUB_KEY": "cli-key-0123456789"] : ["WPS_HUB_KEY": ""], stdout: stdout, stderr: stderr)
        // Read the first line.
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        let cs = try ConnectionString(parsing: text)
        #expect(cs.accessKey.value == "cli-key-0123456789")
        #expect(text.hasPrefix("Endpoint=http://127.0.0.1;Port=") && text.hasSuffix(";Version=1.0;"))
        let client = WebPubSubServiceClient(connectionString: cs)
        #expect(try await client.serviceIsHealthy())
        try await client.sendToAll(hub: "chat", payload: .init(string: "x"), contentType: "text/plain")
        try await client.shutdown()
        hub.terminate()
        #expect(await hub.exitStatus() == 0)
        let log = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("puts a secret on the command line") == (keyFrom == "argument"), "\(log)")
        #expect(!log.contains("cli-key-0123456789"), "the key is never logged")
    }
}
