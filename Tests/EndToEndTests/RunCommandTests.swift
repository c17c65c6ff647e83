import BridgeJSON
import BridgeTestSupport
import Foundation
import Synchronization
import Testing
import WebPubSub

/// `wps-bridge` as a user runs it: the built binary, a config file, stdin, and a real HTTP
/// server that checks every request's token.
@Suite(.serialized) struct RunCommandTests {
    /// Writes a config for a stdin source routed to `hub chat, group demo`, dead letters to a file.
    func config(_ dir: String, connectionString: String, extra: String = "") throws -> String {
        let path = dir + "/bridge.yaml"
        try """
        webpubsub:
          connectionString: "\(connectionString)"
          hub: chat
          connectTimeout: 1s
        sources:
          - {name: in, type: stdin}
        routes:
          - {from: in, to: [{group: demo}]}
        deadLetter: {type: file, path: dead.ndjson}
        delivery:
          retry: {maxAttempts: 3, initialBackoff: 10ms, maxBackoff: 100ms}
        \(extra)
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func deadLetters(_ dir: String) throws -> [JSONValue] {
        guard FileManager.default.fileExists(atPath: dir + "/dead.ndjson") else { return [] }
        return try String(contentsOfFile: dir + "/dead.ndjson", encoding: .utf8).split(separator: "\n").map { try JSONValue(parsing: String($0)) }
    }

    @Test func sendsValidLinesAndDeadLettersTheInvalidOne() async throws {
        try await withRecordingServer { server in
            let dir = try TestEnvironment.temporaryDirectory()
            let cfg = try config(dir, connectionString: server.connectionString)
            let result = try await runProcess(
                try TestEnvironment.bridgeBinary(), ["run", "--config", cfg], input: "{\"data\":{\"n\":1}}\nnot json\n")
            #expect(result.status == 0, "\(result.stderr)")
            let requests = server.requests
            #expect(requests.count == 1)
            let r = try #require(requests.first)
            #expect(r.authError == nil)
            #expect(r.method == "POST" && r.segments == ["api", "hubs", "chat", "groups", "demo", ":send"])
            #expect(r.headers["content-type"] == "application/json")
            #expect(r.bodyText == #"{"n":1}"#)
            #expect(result.stderr.contains("line 2"), "\(result.stderr)")
            let dead = try deadLetters(dir)
            #expect(dead.count == 1)
            #expect(dead.first?["data"] == .string("not json"))
            #expect(dead.first?["headers"]?["wps-source"] == .string("in@2"))
        }
    }

    /// A server for health and metrics only does not keep the run going once stdin ended.
    @Test func aHealthServerDoesNotOutliveTheSources() async throws {
        try await withRecordingServer { server in
            let dir = try TestEnvironment.temporaryDirectory()
            let port = try TestEnvironment.freePort()
            let cfg = try config(dir, connectionString: server.connectionString, extra: "server: {listen: 127.0.0.1:\(port)}")
            let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", cfg], input: "{\"data\":1}\n", timeout: 30)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(server.requests.filter { $0.method == "POST" }.map(\.bodyText) == ["1"])
        }
    }

    @Test func honoursRetryAfterOn429() async throws {
        try await withRecordingServer { server in
            server.enqueue(.init(status: 429, headers: ["Retry-After": "1"], body: #"{"code":"TooManyRequests","message":"throttled"}"#))
            let dir = try TestEnvironment.temporaryDirectory()
            let cfg = try config(dir, connectionString: server.connectionString)
            let result = try await runProcess(
                try TestEnvironment.bridgeBinary(), ["run", "-c", cfg], input: "{\"data\":\"hi\",\"dataType\":\"text\"}\n")
            #expect(result.status == 0, "\(result.stderr)")
            let r = server.requests
            #expect(r.count == 2)
            #expect(r.allSatisfy { $0.bodyText == "hi" && $0.headers["content-type"] == "text/plain" })
            // The retry waited for the service's Retry-After, not the 10 ms backoff of the config.
            if r.count == 2 { #expect(r[1].receivedAt.timeIntervalSince(r[0].receivedAt) >= 0.9) }
            #expect(try deadLetters(dir).isEmpty)
        }
    }

    /// A hub that takes 100 requests a second, a bridge that could send far more: the bridge
    /// paces itself once refused, and every message arrives once, none dead-lettered.
    @Test func throttledHubGetsEverythingOnce() async throws {
        let hub = try await HubProcess(arguments: ["--rate-limit", "100"])
        defer { Task { await hub.stop() } }
        let subscriber = try await hub.subscriber(hub: "chat", group: "demo")
        let dir = try TestEnvironment.temporaryDirectory()
        let path = dir + "/bridge.yaml"
        try """
        webpubsub:
          connectionString: "\(hub.connectionString)"
          hub: chat
        sources:
          - {name: in, type: stdin, format: json}
        routes:
          - {from: in, to: [{group: demo}], ordering: none}
        deadLetter: {type: file, path: \(dir)/dead.ndjson}
        delivery:
          concurrency: 16
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let count = 400
        let input = (0..<count).map { #"{"i":\#($0)}"# }.joined(separator: "\n") + "\n"
        let result = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["run", "-c", path, "--log-format", "json"], input: input, timeout: 120)
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        var seen: [Int: Int] = [:]
        while seen.count < count, let m = await subscriber.expect(type: "message", timeout: .seconds(10)) {
            if let i = m["data"]?["i"], case .number(let n) = i, let n = Int(n) { seen[n, default: 0] += 1 }
        }
        #expect(seen.count == count && seen.values.allSatisfy { $0 == 1 }, "\(seen.count) distinct")
        #expect(subscriber.drain().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: dir + "/dead.ndjson"))
        #expect(result.stderr.contains("sends are paced from now on"), "\(result.stderr.suffix(2000))")
        #expect(result.stderr.contains("delivered \(count), "), "\(result.stderr.suffix(2000))")
        await subscriber.close()
    }

    @Test func retriesA500ThenSucceeds() async throws {
        try await withRecordingServer { server in
            server.enqueue(.init(status: 500))
            let dir = try TestEnvironment.temporaryDirectory()
            let cfg = try config(dir, connectionString: server.connectionString)
            let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", cfg], input: "{\"data\":[1,2]}\n")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(server.requests.map(\.bodyText) == ["[1,2]", "[1,2]"])
            #expect(try deadLetters(dir).isEmpty)
        }
    }

    @Test func deadLettersA400WithoutRetrying() async throws {
        try await withRecordingServer { server in
            server.enqueue(.init(status: 400, body: #"{"code":"InvalidRequest","message":"no such group"}"#))
            let dir = try TestEnvironment.temporaryDirectory()
            let cfg = try config(dir, connectionString: server.connectionString)
            let result = try await runProcess(
                try TestEnvironment.bridgeBinary(), ["run", "-c", cfg], input: "{\"data\":{\"a\":1},\"key\":\"k\"}\n{\"data\":2,\"key\":\"k\"}\n")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(server.requests.count == 2)
            let dead = try deadLetters(dir)
            #expect(dead.count == 1)
            #expect(dead.first?["data"] == .object([("a", .number("1"))]))
            #expect(dead.first?["key"] == .string("k"))
            #expect(dead.first?["headers"]?["wps-status"] == .string("400"))
            #expect(dead.first?["headers"]?["wps-error"]?.stringValue?.contains("no such group") == true)
            #expect(result.stderr.contains("dead-lettered"))
        }
    }

    /// Web PubSub down for 20 s (connections refused), then back: an outage is the route's
    /// condition, not the messages' failure. Every message arrives once, none is dead-lettered,
    /// and the bridge says what it waits for.
    @Test func anOutageIsWaitedOutAndLosesNothing() async throws {
        let server = RecordingServer()
        try await server.start()
        let port = server.port
        await server.stop()
        let dir = try TestEnvironment.temporaryDirectory()
        let cfg = try config(dir, connectionString: server.connectionString)
        let input = (0..<20).map { #"{"data":"m\#($0)","dataType":"text"}"# }.joined(separator: "\n") + "\n"
        let started = ContinuousClock.now
        let restart = Task {
            try await Task.sleep(for: .seconds(20))
            try await server.start(port: port)
        }
        let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", cfg, "--log-format", "text"], input: input, timeout: 90)
        try await restart.value
        await server.stop()
        #expect(result.status == 0, "\(result.stderr.suffix(3000))")
        #expect(ContinuousClock.now - started >= .seconds(20))
        let delivered = server.requests.filter { $0.authError == nil }.map(\.bodyText)
        #expect(delivered.sorted() == (0..<20).map { "m\($0)" }.sorted(), "each message once: \(delivered)")
        #expect(try deadLetters(dir).isEmpty)
        #expect(result.stderr.contains("route in->demo waits") || result.stderr.contains("waits"), "\(result.stderr.suffix(3000))")
        #expect(result.stderr.contains("unreachable or failing"), "\(result.stderr.suffix(3000))")
        #expect(result.stderr.contains("accepts sends again"), "\(result.stderr.suffix(3000))")
    }

    /// Web PubSub refusing the bridge's key for 10 s (a rotated key), then taking it: the route
    /// waits instead of dead-lettering the stream, and goes on by itself.
    @Test func aRefusedKeyPausesTheRouteUntilItIsAccepted() async throws {
        let fixedAt = Date().addingTimeInterval(10)
        let accepted = Lines()
        let server = RecordingServer(responder: { request in
            if Date() < fixedAt { return .init(status: 401, body: #"{"code":"Unauthorized","message":"invalid token"}"#) }
            accepted.append(request.bodyText)
            return nil
        })
        try await server.start()
        let dir = try TestEnvironment.temporaryDirectory()
        let cfg = try config(dir, connectionString: server.connectionString)
        let input = (0..<20).map { #"{"data":"m\#($0)","dataType":"text"}"# }.joined(separator: "\n") + "\n"
        let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", cfg, "--log-format", "text"], input: input, timeout: 60)
        await server.stop()
        #expect(result.status == 0, "\(result.stderr.suffix(3000))")
        #expect(accepted.all.sorted() == (0..<20).map { "m\($0)" }.sorted(), "each message accepted once: \(accepted.all)")
        #expect(server.requests.count > 20, "the bridge tried while refused")
        #expect(try deadLetters(dir).isEmpty)
        #expect(result.stderr.contains("refuses the bridge (401"), "\(result.stderr.suffix(3000))")
        #expect(result.stderr.contains("access key"), "the log line names the likely fix")
        // Once every 30 s, not once per send.
        #expect(result.stderr.components(separatedBy: "refuses the bridge (401").count - 1 <= 2, "\(result.stderr.suffix(3000))")
    }

    @Test func sigtermStopsAWaitingBridgeCleanly() async throws {
        try await withRecordingServer { server in
            let dir = try TestEnvironment.temporaryDirectory()
            let cfg = try config(dir, connectionString: server.connectionString)
            let bridge = try ChildProcess(try TestEnvironment.bridgeBinary(), ["run", "-c", cfg])
            bridge.write("{\"data\":1}\n")
            // Wait until the line was sent, then stop the bridge while stdin is still open.
            #expect(await eventually { !server.requests.isEmpty })
            #expect(server.requests.count == 1)
            bridge.terminate()
            #expect(await bridge.exitStatus() == 0)
            bridge.closeInput()
        }
    }
}

extension RunCommandTests {
    @Test func aSecondSignalExitsWithoutWaitingForTheDrain() async throws {
        let server = RecordingServer()
        try await server.start()
        let cs = server.connectionString
        await server.stop()
        let dir = try TestEnvironment.temporaryDirectory()
        // Nothing listens: the send is retried for minutes, and shutdown would wait 60 s for it.
        let cfg = try config(dir, connectionString: cs, extra: "  shutdownTimeout: 60s")
        let text = try String(contentsOfFile: cfg, encoding: .utf8)
            .replacingOccurrences(
                of: "retry: {maxAttempts: 3, initialBackoff: 10ms, maxBackoff: 100ms}",
                with: "retry: {maxAttempts: 1000, initialBackoff: 200ms, maxBackoff: 1s}")
        let bridge = try BridgeProcess(text, in: dir)
        bridge.write("{\"data\":1}\n")
        #expect(await eventually { bridge.log.contains("send failed, retrying") }, "\(bridge.logTail)")
        bridge.terminate()
        #expect(await eventually { bridge.log.contains("Signal caught") }, "the first signal starts the graceful shutdown: \(bridge.logTail)")
        try await Task.sleep(for: .milliseconds(500))
        #expect(bridge.isRunning, "which drains (up to shutdownTimeout)")
        let started = ContinuousClock.now
        bridge.terminate()
        #expect(await bridge.exitStatus() == 130)
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(bridge.log.contains("second signal"))
    }
}

@Suite struct OtherCommandTests {
    @Test func validateListsEveryProblemWithItsLine() async throws {
        let dir = try TestEnvironment.temporaryDirectory()
        let path = dir + "/bad.yaml"
        try """
        webpubsub:
          connectionString: "Endpoint=ftp://x;AccessKey=k"
        sources:
          - {name: in, type: stdn}
        routes:
          - {from: in, to: [{hub: chat, group: "room-{kee}"}]}
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["validate", "--config", path])
        #expect(result.status == 1)
        #expect(result.stdout.contains("3 problems"))
        #expect(result.stdout.contains("line 2"))
        #expect(result.stdout.contains("line 4"))
        #expect(result.stdout.contains("line 6"))
    }

    @Test func validateSummarisesAGoodFile() async throws {
        let path = TestEnvironment.packageRoot + "/bridge.yaml.example"
        let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["validate", "--config", path])
        #expect(result.status == 0, "\(result.stdout)")
        #expect(result.stdout.contains("valid"))
        #expect(result.stdout.contains("Routes (1)"))
    }

    @Test func tokenPrintsAVerifiableClientURL() async throws {
        let cs = "Endpoint=http://localhost;Port=8080;AccessKey=secretkey;Version=1.0;"
        let result = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["token", "--hub", "chat", "--user", "u1", "--role", "webpubsub.joinLeaveGroup", "--group", "g"],
            environment: ["WEBPUBSUB_CONNECTION_STRING": cs])
        #expect(result.status == 0, "\(result.stderr)")
        let url = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(url.hasPrefix("ws://localhost:8080/client/hubs/chat?access_token="))
        let token = String(url.split(separator: "=", maxSplits: 1)[1])
        let claims = try AccessKeyJWT.verify(token, keys: [AccessKey("secretkey")])
        #expect(claims.subject == "u1" && claims.roles == ["webpubsub.joinLeaveGroup"] && claims.groups == ["g"])
        #expect(!result.stdout.contains("secretkey"))
    }

    @Test func tokenForAnotherClientProtocolNamesItsEndpoint() async throws {
        let cs = "Endpoint=http://localhost;Port=8080;AccessKey=secretkey;Version=1.0;"
        let mqtt = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["token", "--hub", "chat", "--client-protocol", "MQTT"],
            environment: ["WEBPUBSUB_CONNECTION_STRING": cs])
        #expect(mqtt.status == 0, "\(mqtt.stderr)")
        #expect(mqtt.stdout.hasPrefix("ws://localhost:8080/clients/mqtt/hubs/chat?access_token="))
        let bad = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["token", "--hub", "chat", "--client-protocol", "stomp"],
            environment: ["WEBPUBSUB_CONNECTION_STRING": cs])
        #expect(bad.status != 0 && bad.stderr.contains("--client-protocol: 'stomp' is not one of Default, MQTT, SocketIO"), "\(bad.stderr)")
    }

    @Test func sendReachesTheService() async throws {
        try await withRecordingServer { server in
            let result = try await runProcess(
                try TestEnvironment.bridgeBinary(),
                [
                    "send", "--hub", "chat", "--user", "u 1", "--filter", "connectionId ne 'x'", "--data-type", "json", #"{"hello":true}"#,
                    "--connection-string", server.connectionString,
                ])
            #expect(result.status == 0, "\(result.stderr)")
            let r = try #require(server.requests.first)
            #expect(r.segments == ["api", "hubs", "chat", "users", "u 1", ":send"])
            #expect(r.queryValues("filter") == ["connectionId ne 'x'"])
            #expect(r.bodyText == #"{"hello":true}"#)
            let bad = try await runProcess(try TestEnvironment.bridgeBinary(), ["send", "--hub", "chat", "--all", "--group", "g", "x"])
            #expect(bad.status != 0)
            #expect(result.stderr.contains("puts a secret on the command line"), "\(result.stderr)")
        }
    }

    /// The connection string from a file: nothing secret on the command line, no warning.
    @Test func sendReadsTheConnectionStringFromAFile() async throws {
        try await withRecordingServer { server in
            let dir = try TestEnvironment.temporaryDirectory()
            try (server.connectionString + "\n").write(toFile: dir + "/cs", atomically: true, encoding: .utf8)
            let result = try await runProcess(
                try TestEnvironment.bridgeBinary(), ["send", "--hub", "chat", "--all", "hi", "--connection-string-file", dir + "/cs"],
                environment: ["WEBPUBSUB_CONNECTION_STRING": ""])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(server.requests.count == 1 && server.requests.first?.authError == nil)
            #expect(!result.stderr.contains("puts a secret"), "\(result.stderr)")
            let missing = try await runProcess(
                try TestEnvironment.bridgeBinary(), ["send", "--hub", "chat", "--all", "hi", "--connection-string-file", dir + "/nope"])
            #expect(missing.status != 0 && missing.stderr.contains("--connection-string-file: cannot read"), "\(missing.stderr)")
        }
    }

    /// `wps-bridge hub` checks its flags with the same rules as `webpubsub.embedded` in a config
    /// file, and names the flag that is wrong.
    @Test(arguments: [
        (["--rate-limit", "0"], "--rate-limit: 0 is out of range"),
        (["--port", "70000"], "--port: 70000 is out of range"),
        (["--trust-issuer", "login.example"], "--trust-issuer: 'login.example' is not an issuer URL"),
        (["--event-handler", "9chat=http://x/{event}"], "--event-handler: hub name '9chat' must start with a letter"),
        (["--event-handler", "chat=ftp://x"], "--event-handler: hub 'chat': the event handler URL"),
        (["--event-handler", "chat"], "--event-handler takes HUB=URL_TEMPLATE"),
    ])
    func hubRefusesBadFlagsNamingTheFlag(arguments: [String], message: String) async throws {
        let result = try await runProcess(try TestEnvironment.bridgeBinary(), ["hub", "--port", "0"] + arguments, timeout: 30)
        #expect(result.status != 0 && result.stderr.contains(message), "\(result.stderr)")
    }

    /// `--credential` takes the rules of `webpubsub.credential`, and names the flag to fix.
    @Test func aCredentialWithoutItsSettingsIsRefusedNamingTheFlags() async throws {
        let result = try await runProcess(
            try TestEnvironment.bridgeBinary(),
            [
                "send", "--hub", "chat", "--all", "hi", "--endpoint", "https://x.webpubsub.azure.com", "--credential", "clientSecret", "--client-id",
                "c",
            ],
            environment: ["AZURE_TENANT_ID": "", "AZURE_CLIENT_SECRET": ""], timeout: 30)
        #expect(result.status != 0 && result.stderr.contains("missing 'tenantId', 'clientSecret'"), "\(result.stderr)")
        let unknown = try await runProcess(
            try TestEnvironment.bridgeBinary(), ["send", "--hub", "chat", "--all", "hi", "--endpoint", "https://x", "--credential", "password"],
            timeout: 30)
        #expect(unknown.status != 0 && unknown.stderr.contains("--credential: unknown credential type 'password'"), "\(unknown.stderr)")
    }
}
