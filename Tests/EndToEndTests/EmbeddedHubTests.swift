import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSub

/// The main job: `wps-bridge run` with `webpubsub: embedded`, stdin in, a browser-like
/// WebSocket subscriber out; and `wps-bridge hub` on its own.
@Suite(.serialized) struct EmbeddedHubTests {
    @Test func linesTypedOnStdinReachASubscriberOfTheGroup() async throws {
        let port = try TestEnvironment.freePort()
        let key = "e2e-key-0123456789ABCDEFGHIJKLMNOPQRSTUV"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.bridgeBinary())
        process.arguments = ["run", "--config", TestEnvironment.packageRoot + "/bridge.yaml.example"]
        var env = ProcessInfo.processInfo.environment
        env["WPS_HUB_PORT"] = String(port)
        env["WPS_HUB_KEY"] = key
        process.environment = env
        process.currentDirectoryURL = URL(fileURLWithPath: try TestEnvironment.temporaryDirectory())
        let stdin = Pipe()
        process.standardInput = stdin
        process.standardError = FileHandle.nullDevice
        let exited = AsyncStream<Int32>.makeStream()
        process.terminationHandler = { p in
            exited.continuation.yield(p.terminationStatus)
            exited.continuation.finish()
        }
        try process.run()
        defer { if process.isRunning { process.terminate() } }

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

        stdin.fileHandleForWriting.write(Data("hello from stdin\nsecond line\n".utf8))
        let first = await subscriber.expect(type: "message")
        let second = await subscriber.expect(type: "message")
        #expect(first?["group"] == .string("demo") && first?["dataType"] == .string("text") && first?["data"] == .string("hello from stdin"))
        #expect(second?["data"] == .string("second line") && second?["sequenceId"] == .number("2"))

        try stdin.fileHandleForWriting.close()
        var status: Int32 = -1
        for await s in exited.stream { status = s }
        #expect(status == 0)
    }

    @Test func hubCommandPrintsItsConnectionStringFirst() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try TestEnvironment.bridgeBinary())
        process.arguments = ["hub", "--port", "0", "--access-key", "cli-key-0123456789"]
        let stdout = Pipe()
        process.standardOutput = stdout
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
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
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }
}
