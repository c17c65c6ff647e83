import AzureIdentity
import BridgeJSON
import BridgeServer
import BridgeTestSupport
import Foundation
import HTTPGuards
import LocalHub
import Logging
import NIOCore
import Synchronization
import Testing
import WebPubSub

@testable import BridgeApp
@testable import BridgeConfig
@testable import BridgeCore

let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

func load(_ yaml: String, env: [String: String] = [:], baseDirectory: String = "/tmp") throws(ConfigError) -> BridgeConfiguration {
    try BridgeConfiguration.parse(yaml: yaml, baseDirectory: baseDirectory, environment: env, logger: quiet)
}

func issues(_ yaml: String, env: [String: String] = [:]) -> [ConfigIssue] {
    do {
        _ = try load(yaml, env: env)
        return []
    } catch {
        return error.issues
    }
}

let valid = """
    webpubsub:
      connectionString: ${WPS_CS}
      hub: chat
    sources:
      - name: in
        type: stdin
        format: lines
    routes:
      - name: fanout
        from: in
        where: "json.kind ne 'noise'"
        to:
          - {group: "room-{key}"}
          - {hub: ops, all: true, filter: "userId ne 'bot'", excluded: [c1]}
          - {hub: ops, user: "{header.user}", dataType: text, ttl: 30}
        ordering: none
        deadLetter: {type: stdout}
    deadLetter: {type: file, path: dlq.ndjson}
    delivery:
      maxInFlight: 100
      concurrency: 4
      retry: {maxAttempts: 3, initialBackoff: 50ms, maxBackoff: 2s}
      shutdownTimeout: 5s
    """

@Suite struct ConfigurationTests {
    let env = ["WPS_CS": "Endpoint=http://127.0.0.1;Port=9;AccessKey=k;Version=1.0;"]

    @Test func readsAValidFile() throws {
        let c = try load(valid, env: env)
        #expect(c.webpubsub.connectionString?.endpoint == "http://127.0.0.1:9")
        #expect(c.webpubsub.defaultHub == "chat")
        #expect(c.core.sources.map(\.name) == ["in"])
        let route = try #require(c.core.routes.first)
        #expect(route.name == "fanout" && route.ordering == .none && route.condition != nil)
        #expect(route.targets.count == 3)
        #expect(route.targets[0].hub.text == "chat")
        #expect(route.targets[2].messageTTLSeconds == 30 && route.targets[2].dataType == .text)
        #expect(route.deadLetter?.description == "stdout")
        #expect(c.core.deadLetter?.description == "file /tmp/dlq.ndjson")
        #expect(c.core.delivery.maxInFlight == 100 && c.core.delivery.concurrency == 4)
        #expect(c.core.delivery.retry == RetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(50), maxBackoff: .seconds(2)))
        #expect(c.core.delivery.shutdownTimeout == .seconds(5))
        #expect(c.summary.contains("fanout: from in where json.kind ne 'noise' (unordered)"))
    }

    @Test func substitutesVariablesWithDefaults() throws {
        let yaml = """
            webpubsub:
              endpoint: ${EP:-http://localhost:8080}
              accessKey: ${KEY}
              hub: ${HUB:-chat}
            sources: [{name: in, type: stdin}]
            routes: [{from: in, to: [{all: true}]}]
            """
        let c = try load(yaml, env: ["KEY": "secret", "HUB": ""])
        #expect(c.webpubsub.connectionString?.endpoint == "http://localhost:8080")
        #expect(c.webpubsub.connectionString?.accessKey.value == "secret")
        #expect(c.webpubsub.defaultHub == "chat")
        let reader = ConfigReader(environment: ["A": "1"], baseDirectory: "/")
        #expect(reader.substitute("x$${A}y${A}$z", path: "", mark: nil) == "x${A}y1$z")
        let missing = issues(yaml)
        #expect(missing.count == 1)
        #expect(missing.first?.message.contains("environment variable KEY is not set") == true)
        #expect(missing.first?.line == 3)
    }

    @Test func readsTheKeyFromAFile() throws {
        let dir = try TestEnvironment.temporaryDirectory()
        try "filekey\n".write(toFile: dir + "/key", atomically: true, encoding: .utf8)
        let yaml = """
            webpubsub: {endpoint: "https://x.webpubsub.azure.com", accessKeyFile: key, hub: h}
            sources: [{name: in, type: stdin}]
            routes: [{from: in, to: [{all: true}]}]
            """
        let c = try load(yaml, baseDirectory: dir)
        #expect(c.webpubsub.connectionString?.accessKey.value == "filekey")
        let gone = try? load(yaml, baseDirectory: dir + "/nowhere")
        #expect(gone == nil)
    }

    /// Each mistake the issue names, alone, gives one problem with its path and line.
    @Test(arguments: [
        ("sources:\n  - {name: in, type: stdin, colour: red}", "sources[0].colour", 2, "unknown key 'colour'"),
        ("sources:\n  - {name: in, type: kafkaa}", "sources[0].type", 2, "unknown source type 'kafkaa'"),
        ("routes:\n  - {from: nope, to: [{group: g}]}", "routes[0].from", 2, "not a source"),
        ("routes:\n  - {from: in, to: [{group: \"room-{nokey}\"}]}", "routes[0].to[0].group", 2, "unknown placeholder '{nokey}'"),
        ("routes:\n  - {from: in, to: [{hub: \"\", group: g}]}", "routes[0].to[0].hub", 2, "hub name is empty"),
        ("webpubsub:\n  connectionString: \"Endpoint=x\"\n  hub: chat", "webpubsub.connectionString", 2, "invalid connection string"),
        ("routes:\n  - {from: in, to: [{group: g, user: u}]}", "routes[0].to[0]", 2, "give exactly one of"),
        ("routes:\n  - {from: in, to: [{all: true, filter: \"userId eq\"}]}", "routes[0].to[0].filter", 2, "invalid filter"),
        ("routes:\n  - {from: in, to: [{all: true, filter: \"nickname eq 'x'\"}]}", "routes[0].to[0].filter", 2, "unknown field 'nickname'"),
        ("routes:\n  - {from: in, where: \"json.a eq\", to: [{group: g}]}", "routes[0].where", 2, "invalid condition"),
        ("routes:\n  - {from: in, to: [{group: \"{topic}\"}]}", "routes[0].to[0]", 2, "has no topic"),
        ("routes:\n  - {from: in, to: [{group: g}], ordering: random}", "routes[0].ordering", 2, "not one of"),
        ("delivery:\n  concurrency: lots", "delivery.concurrency", 2, "not a whole number"),
        ("delivery:\n  shutdownTimeout: soon", "delivery.shutdownTimeout", 2, "not a duration"),
        ("deadLetter: {type: sqs}", "deadLetter.type", 1, "unknown sink type 'sqs'"),
        ("deadLetter: {type: kafka, topic: t}", "deadLetter", 1, "missing required key 'brokers'"),
        ("extra: 1", "extra", 1, "unknown key 'extra'"),
        ("webpubsub:\n  hub: chat\n  endpoint: https://x\n  credential: password", "webpubsub.credential", 4, "unknown credential type 'password'"),
        (
            "webpubsub:\n  hub: chat\n  endpoint: https://x\n  credential: clientSecret", "webpubsub.credential", 4,
            "needs tenantId, clientId and clientSecret"
        ),
        (
            "webpubsub:\n  hub: chat\n  endpoint: https://x\n  credential: {type: clientSecret, tenantId: t, clientId: c}", "webpubsub.credential", 4,
            "missing 'clientSecret'"
        ),
        (
            "webpubsub:\n  hub: chat\n  endpoint: https://x\n  credential: {type: managedIdentity, tenantId: t}", "webpubsub.credential.tenantId", 4,
            "unknown key 'tenantId'"
        ),
        (
            "webpubsub:\n  hub: chat\n  endpoint: https://x\n  credential: {type: managedIdentity, endpoint: 169.254.169.254}",
            "webpubsub.credential.endpoint", 4, "http:// or https://"
        ),
        (
            "webpubsub:\n  hub: chat\n  connectionString: \"Endpoint=http://h;AccessKey=k\"\n  credential: managedIdentity", "webpubsub.credential",
            4, "give 'endpoint' instead"
        ),
        ("webpubsub:\n  hub: chat\n  credential: managedIdentity", "webpubsub", 2, "missing required key 'endpoint'"),
        (
            "webpubsub:\n  hub: chat\n  endpoint: https://x\n  accessKey: k\n  credential: default", "webpubsub", 2,
            "'accessKey' goes with credential type accessKey"
        ),
    ])
    func reportsEachMistake(patch: String, path: String, line: Int, message: String) throws {
        // Start from a minimal valid file and replace one section with the patch.
        var sections = [
            "webpubsub": "webpubsub:\n  connectionString: \"Endpoint=http://h;AccessKey=k\"\n  hub: chat",
            "sources": "sources:\n  - {name: in, type: stdin}",
            "routes": "routes:\n  - {from: in, to: [{group: g}]}",
        ]
        let key = String(patch.prefix { $0 != ":" })
        sections[key] = patch
        let ordered = [key] + ["webpubsub", "sources", "routes"].filter { $0 != key }
        let yaml = ordered.compactMap { sections[$0] }.joined(separator: "\n")
        let found = issues(yaml)
        #expect(found.count == 1, "\(found)")
        let issue = try #require(found.first)
        #expect(issue.path == path)
        #expect(issue.line == line)
        #expect(issue.message.contains(message), "\(issue.message)")
    }

    @Test func readsEntraIDCredentials() throws {
        let dir = try TestEnvironment.temporaryDirectory()
        try "from-file\n".write(toFile: dir + "/secret", atomically: true, encoding: .utf8)
        func credential(_ block: String) throws -> WebPubSubSettings {
            try load(
                "webpubsub:\n  endpoint: https://x.webpubsub.azure.com/\n  hub: chat\n  credential: \(block)\nsources:\n  - {name: in, type: stdin}\nroutes:\n  - {from: in, to: [{group: g}]}",
                baseDirectory: dir
            ).webpubsub
        }
        let secret = try credential("{type: clientSecret, tenantId: t, clientId: c, clientSecretFile: secret, authorityHost: \"http://127.0.0.1:1\"}")
        #expect(secret.entra?.endpoint == "https://x.webpubsub.azure.com")
        #expect(secret.entra?.credential == .clientSecret(tenantId: "t", clientId: "c", secret: "from-file", authorityHost: "http://127.0.0.1:1"))
        #expect(secret.connectionString == nil)
        #expect(try credential("managedIdentity").entra?.credential == .managedIdentity(clientId: nil, endpoint: nil))
        #expect(try credential("{type: default, managedIdentityClientId: m}").entra?.credential == .default(managedIdentityClientId: "m"))
        #expect(
            try credential("{type: workloadIdentity, tokenFile: sa-token}").entra?.credential
                == .workloadIdentity(tenantId: nil, clientId: nil, tokenFile: dir + "/sa-token", authorityHost: nil))
        // The summary names the credential, never the secret.
        let summary = try load(
            "webpubsub:\n  endpoint: https://x\n  hub: chat\n  credential: {type: clientSecret, tenantId: t, clientId: c, clientSecret: hush}\nsources:\n  - {name: in, type: stdin}\nroutes:\n  - {from: in, to: [{group: g}]}"
        ).summary
        #expect(summary.contains("clientSecret (tenant t, client id c)") && !summary.contains("hush"), "\(summary)")
        // type: accessKey is today's endpoint + key.
        let key = try credential("accessKey\n  accessKey: k1")
        #expect(key.connectionString?.accessKey.value == "k1" && key.entra == nil)
    }

    @Test func collectsEveryProblemInOnePass() {
        let yaml = """
            webpubsub:
              connectionString: "Endpoint=ftp://x;AccessKey=k"
            sources:
              - {name: in, type: stdn}
            routes:
              - {from: in, to: [{hub: chat, group: "{kee}"}]}
            """
        let found = issues(yaml)
        #expect(found.map(\.line) == [2, 4, 6])
    }

    @Test func yamlSyntaxErrorHasALine() {
        let found = issues("sources:\n  - name: [unclosed\nroutes: []")
        #expect(found.count == 1)
        #expect(found.first?.line != nil)
        #expect(found.first?.message.hasPrefix("not valid YAML") == true)
    }

    @Test func warnsWithoutADeadLetterSink() throws {
        let c = try load(
            "webpubsub: {connectionString: \"Endpoint=http://h;AccessKey=k\", hub: c}\nsources: [{name: in, type: stdin}]\nroutes: [{from: in, to: [{all: true}]}]"
        )
        #expect(c.warnings.contains { $0.message.contains("no deadLetter sink") })
    }

    /// An at-least-once source commits what it gave up on: without a dead-letter sink that is a
    /// silent loss, so it takes `deadLetter: {type: drop}` to say so.
    @Test(arguments: [
        "{name: k, type: kafka, brokers: \"127.0.0.1:9092\", topics: [t], group: g}",
        "{name: k, type: redis-stream, url: \"redis://127.0.0.1:6379\", streams: [s], group: g}",
        "{name: k, type: webpubsub, hub: chat, groups: [room]}",
    ])
    func anAtLeastOnceSourceNeedsADeadLetterSink(source: String) throws {
        let head = "webpubsub: {connectionString: \"Endpoint=http://h;AccessKey=k\", hub: c}\nsources: [\(source)]\n"
        let refused = issues(head + "routes: [{name: r, from: k, to: [{all: true}]}]")
        #expect(
            refused.contains { $0.message.contains("route 'r' reads 'k'") && $0.message.contains("deadLetter: {type: drop}") && $0.line == 3 },
            "\(refused)")
        // Dropping on purpose, a route's own sink, or a top-level one: accepted.
        for tail in [
            "routes: [{name: r, from: k, to: [{all: true}], deadLetter: {type: drop}}]",
            "routes: [{name: r, from: k, to: [{all: true}], deadLetter: {type: file, path: /tmp/d.ndjson}}]",
            "deadLetter: {type: drop}\nroutes: [{name: r, from: k, to: [{all: true}]}]",
        ] {
            #expect(issues(head + tail).isEmpty, "\(tail): \(issues(head + tail))")
        }
    }
}

@Suite struct ConnectionLimitConfigurationTests {
    let head =
        "webpubsub: {connectionString: \"Endpoint=http://h;AccessKey=k\", hub: c}\nsources: [{name: in, type: stdin}]\nroutes: [{from: in, to: [{all: true}]}]\n"

    @Test func targetMetadataIsReadAndChecked() throws {
        func config(_ metadata: String) -> String {
            """
            webpubsub: {connectionString: "Endpoint=http://127.0.0.1;Port=1;AccessKey=k0123456789;Version=1.0;", hub: chat}
            sources: [{name: in, type: stdin}]
            routes:
              - from: in
                to: [{group: g, metadata: \(metadata)}]
            deadLetter: {type: stdout}
            """
        }
        let c = try load(config(#"{Trace: "{header.traceparent}", src: stdin}"#))
        #expect(c.core.routes.first?.targets.first?.metadata.map(\.key) == ["trace", "src"])
        for (metadata, message) in [
            (#"{"a b": x}"#, "header names may not"), (#"{t: "{header}"}"#, "{header}"), (#"{t: "caf\u00e9"}"#, "printable ASCII"),
            (#"{T: a, t: b}"#, "differ only in case"),
        ] {
            let found = issues(config(metadata))
            #expect(found.contains { $0.message.contains(message) && $0.path.contains("metadata") }, "\(metadata): \(found)")
        }
    }

    @Test func batchAndConflateAreReadAndChecked() throws {
        func config(_ route: String, source: String = "{name: in, type: stdin}", target: String = "{group: g}") -> String {
            """
            webpubsub: {connectionString: "Endpoint=http://127.0.0.1;Port=1;AccessKey=k0123456789;Version=1.0;", hub: chat}
            sources: [\(source)]
            routes:
              - from: in
                to: [\(target)]
                \(route)
            deadLetter: {type: stdout}
            """
        }
        let c = try load(config("batch: {maxMessages: 500, maxBytes: 64KB, maxDelay: 5ms}\n    conflate: {key: \"{json.symbol}\"}"))
        let r = try #require(c.core.routes.first)
        #expect(r.batch == BatchSettings(maxMessages: 500, maxBytes: 65536, maxDelay: .milliseconds(5)))
        #expect(r.conflate?.text == "{json.symbol}")
        #expect(c.summary.contains("batched: up to 500 messages, 64 KB, waiting 5 ms; conflated by {json.symbol}"))
        #expect(try load(config("batch: {}")).core.routes.first?.batch == .defaults)
        #expect(try load(config("")).core.routes.first?.batch == nil)
        let tooMany = try load(config("batch: {maxMessages: 5000}"))
        #expect(tooMany.warnings.contains { $0.message.contains("above delivery.maxInFlight") && $0.path.hasSuffix("batch") })
        for (route, message, path) in [
            ("batch: {maxMessages: 0}", "out of range 1...10000", "maxMessages"),
            ("batch: {maxBytes: 2MB}", "out of range 1024...1048576", "maxBytes"),
            ("batch: {maxBytes: lots}", "is not a size", "maxBytes"), ("batch: {maxDelay: 5s}", "above 1s", "maxDelay"),
            ("batch: {size: 5}", "unknown key 'size' in batch", "size"), ("batch: true", "mapping", "batch"),
            ("conflate: {key: \"{json.symbol}\"}", "works within a batch", "conflate"),
            ("batch: {}\n    conflate: {key: fixed}", "same for every message", "key"),
            ("batch: {}\n    conflate: {key: \"{json.\"}", "unclosed", "key"), ("batch: {}\n    conflate: {}", "key", "conflate"),
        ] {
            let found = issues(config(route))
            #expect(found.contains { $0.message.contains(message) && $0.path.hasSuffix(path) }, "\(route): \(found)")
        }
        let binarySource = issues(config("batch: {}", source: "{name: in, type: stdin, dataType: binary}"))
        #expect(binarySource.contains { $0.message.contains("reads binary messages") && $0.path.hasSuffix("batch") }, "\(binarySource)")
        let binaryTarget = issues(config("batch: {}", target: "{group: g, dataType: binary}"))
        #expect(binaryTarget.contains { $0.message.contains("sends binary") && $0.path.hasSuffix("batch") }, "\(binaryTarget)")
    }

    @Test(arguments: [("512", 512), ("64KB", 65536), ("64 kb", 65536), ("1MB", 1 << 20), ("2KiB", 2048), ("1m", 1 << 20)])
    func byteSizesAreRead(text: String, bytes: Int) {
        #expect(ConfigMapping.parseByteSize(text) == bytes)
    }

    @Test(arguments: ["", "KB", "-1KB", "1.5MB", "1GB", "99999999999999999999MB", "12 parsecs"])
    func badByteSizesAreRefused(text: String) {
        #expect(ConfigMapping.parseByteSize(text) == nil)
    }

    @Test func repliesAreReadAndTheirTemplatesChecked() throws {
        func config(_ reply: String) -> String {
            """
            webpubsub: {connectionString: "Endpoint=http://127.0.0.1;Port=1;AccessKey=k0123456789;Version=1.0;", hub: chat}
            server: {listen: 127.0.0.1:8081}
            events:
              - hub: chat
                events: [order]
                to: {type: stdout}
                reply: \(reply)
            """
        }
        let json = try load(config(#"{json: {received: "{event}", by: "{userId}", n: 2, ok: true, none: null, list: [1.5, "x"]}}"#))
        #expect(
            json.eventHandler?.rules.first?.reply
                == .json(
                    .object([
                        ("received", .string("{event}")), ("by", .string("{userId}")), ("n", .number("2")), ("ok", .bool(true)), ("none", .null),
                        ("list", .array([.number("1.5"), .string("x")])),
                    ])))
        #expect(try load(config(#"{text: "got {event}"}"#)).eventHandler?.rules.first?.reply == .text("got {event}"))
        #expect(try load(config("ack")).eventHandler?.rules.first?.reply == .ack)
        for (reply, message) in [
            (#"{text: "hi {claim.sub}"}"#, "{claim.sub} is not known in a reply"),
            (#"{json: {a: "{nope"}}"#, "has an unclosed {"),
            (#"{text: a, json: b}"#, "reply is ack, empty"),
            ("yes", "reply is ack, empty"),
            (#"{txt: a}"#, "txt"),
        ] {
            let found = issues(config(reply))
            #expect(found.contains { $0.message.contains(message) && $0.path.hasPrefix("events[0].reply") }, "\(reply): \(found)")
        }
    }

    @Test func serverAndHubLimitsAreRead() throws {
        let c = try load(head + "server: {listen: \"127.0.0.1:0\", headerTimeout: 2s, idleTimeout: 5s, maxConnections: 50}")
        #expect(c.server?.limits == ConnectionLimits(headerTimeout: .seconds(2), idleTimeout: .seconds(5), maxConnections: 50))
        let hub = try load(
            "webpubsub: {embedded: {port: 0, headerTimeout: 3s, maxConnections: 7}, hub: c}\nsources: [{name: in, type: stdin}]\nroutes: [{from: in, to: [{all: true}]}]\n"
        )
        #expect(hub.webpubsub.embedded?.limits.headerTimeout == .seconds(3))
        #expect(hub.webpubsub.embedded?.limits.maxConnections == 7)
        #expect(hub.webpubsub.embedded?.limits.idleTimeout == .seconds(60))
    }

    @Test func caFileIsReadRelativeToTheConfigAndChecked() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("wps-cafile-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".write(toFile: folder + "/ca.pem", atomically: true, encoding: .utf8)
        try "not a certificate\n".write(toFile: folder + "/key.txt", atomically: true, encoding: .utf8)
        func yaml(_ caFile: String) -> String {
            "webpubsub: {connectionString: \"Endpoint=https://h;AccessKey=k\", hub: c, caFile: \(caFile)}\n"
                + "sources: [{name: in, type: stdin}]\nroutes: [{from: in, to: [{all: true}]}]\n"
        }
        let c = try load(yaml("ca.pem"), baseDirectory: folder)
        #expect(c.webpubsub.client.caFile == folder + "/ca.pem")
        let missing = issues(yaml("/nonexistent/ca.pem"))
        #expect(missing.contains { $0.message.contains("cannot read the CA file '/nonexistent/ca.pem'") && $0.line == 1 }, "\(missing)")
        let notPEM = issues(yaml(folder + "/key.txt"))
        #expect(notPEM.contains { $0.message.contains("holds no PEM certificate") }, "\(notPEM)")
    }

    @Test func adminListenIsReadAndMustBeAnotherPort() throws {
        let c = try load(head + "server: {listen: \"127.0.0.1:8081\", adminListen: \"127.0.0.1:9090\"}")
        #expect(c.server?.admin?.host == "127.0.0.1" && c.server?.admin?.port == 9090)
        #expect(issues(head + "server: {listen: \"0.0.0.0:8081\", adminListen: \":8081\"}").contains { $0.message.contains("another port") })
        #expect(issues(head + "server: {listen: \"0.0.0.0:8081\", adminListen: nine}").contains { $0.message.contains("is not HOST:PORT") })
    }

    /// The event handler's path becomes a route: segments the router would read as parameters
    /// or wildcards are refused, and so is one that would shadow the operator's endpoints.
    @Test(arguments: ["eventhandler", "/eh/", "/healthz", "/events/:hub", "/{x}", "/a/*", "/-", "/-/reload", "/a//b"])
    func anEventHandlerPathTheRouterCannotServeIsRefused(path: String) {
        let found = issues(head + "server: {listen: \"127.0.0.1:0\"}\neventHandler: {path: \"\(path)\", authToken: t0123456789abcdef}\n")
        #expect(found.contains { $0.path == "eventHandler.path" }, "\(path): \(found)")
    }

    /// The embedded hub's settings are read and checked by the hub's own reader: each problem at
    /// its line, in the same pass as the rest of the file.
    @Test func embeddedHubSettingsAreCheckedAtTheirLine() {
        let yaml = """
            webpubsub:
              hub: chat
              embedded:
                rateLimit: 0
                trustedIssuers: [login.example]
                maxGroupsPerConnection: 0
                hubs:
                  chat:
                    eventHandlers:
                      - {url: "ftp://x", systemEvents: [connect, teleport]}
            sources: [{name: in, type: stdin}]
            routes: [{from: in, to: [{all: true}]}]
            """
        let found = issues(yaml)
        #expect(found.contains { $0.message.contains("0 is out of range 1...1000000") && $0.line == 4 }, "\(found)")
        #expect(found.contains { $0.message.contains("'login.example' is not an issuer URL") && $0.line == 5 }, "\(found)")
        #expect(found.contains { $0.message.contains("out of range 1...100000") && $0.line == 6 }, "\(found)")
        #expect(found.contains { $0.message.contains("must start with http:// or https://") }, "\(found)")
        #expect(found.contains { $0.message.contains("unknown system event 'teleport'") }, "\(found)")
    }

    @Test func badLimitsAreReportedWithTheirLine() {
        let found = issues(head + "server:\n  listen: \"127.0.0.1:0\"\n  headerTimeout: 0s\n  maxConnections: 0\n")
        #expect(found.contains { $0.message.contains("headerTimeout must be more than 0") && $0.line == 6 }, "\(found)")
        #expect(found.contains { $0.message.contains("out of range 1...1000000") && $0.line == 7 }, "\(found)")
    }
}

@Suite struct GroupListenerConfigurationTests {
    let base = """
        webpubsub: {connectionString: "Endpoint=http://h;AccessKey=k", hub: chat}
        sources:
          - {name: room, type: webpubsub, hub: chat, groups: [room, lobby], userId: listener}

        """

    @Test func groupRulesNeedNoServerAndReadTheListener() throws {
        let c = try load(base + "events:\n  - {hub: chat, events: [\"group:room\"], to: {type: stdout}}\n")
        #expect(c.server == nil)
        #expect(!c.warnings.contains { $0.message.contains("not read by any route") }, "the events rule reads it")
        #expect(c.eventHandler?.listenerUsers["chat"] == ["listener"])
        #expect(c.eventHandler?.rules.first?.takesHandlerEvents == false)
    }

    @Test func aGroupNoListenerHearsIsAnError() {
        let found = issues(base + "events:\n  - {hub: chat, events: [\"group:other\", \"group:\"], to: {type: stdout}}\n")
        #expect(found.contains { $0.message.contains("no webpubsub source listens to group 'other' of hub 'chat'") })
        #expect(found.contains { $0.message.contains("'group:' needs a group name") })
        let otherHub = issues(base + "events:\n  - {hub: ops, events: [\"group:*\"], to: {type: stdout}}\n")
        #expect(otherHub.contains { $0.message.contains("group:* needs a webpubsub source listening to hub 'ops'") })
    }

    @Test func anUnreadListenerIsWarnedAbout() throws {
        let c = try load(base + "events:\n  - {hub: ops, events: [\"*\"], to: {type: stdout}}\nserver: {listen: \"127.0.0.1:0\"}\n")
        #expect(c.warnings.contains { $0.message.contains("source 'room' is not read by any route") })
    }

    @Test func theEmbeddedHubIsNotAskedForGroupEvents() throws {
        let c = try load(
            """
            webpubsub: {embedded: {port: 0}, hub: chat}
            server: {listen: "127.0.0.1:8099"}
            sources:
              - {name: room, type: webpubsub, hub: chat, groups: [room]}
              - {name: quiet, type: webpubsub, hub: quiet, groups: [q]}
            events:
              - {hub: chat, events: ["group:room", chat, connected], to: {type: stdout}}
              - {hub: quiet, events: ["group:*"], to: {type: stdout}}
            """)
        let handlers = try #require(c.webpubsub.embedded?.eventHandlers)
        #expect(handlers["chat"]?.first?.userEventPattern == "chat")
        #expect(handlers["chat"]?.first?.systemEvents == ["connected"])
        #expect(handlers["quiet"] == nil, "a hub with only group rules sends no events")
    }
}

@Suite struct TransportClassificationTests {
    @Test func classifiesServiceErrors() async throws {
        try await withRecordingServer { server in
            server.enqueue(
                .init(status: 429, headers: ["Retry-After": "1"]), .init(status: 503), .init(status: 408), .init(status: 400), .init(status: 404),
                .init(status: 413), .init(status: 401), .init(status: 403))
            let client = WebPubSubServiceClient(connectionString: try ConnectionString(parsing: server.connectionString))
            let transport = WebPubSubTransport(client: client)
            var failures: [DeliveryFailure] = []
            for _ in 0..<8 {
                do {
                    try await transport.send(.init(string: "x"), dataType: .text, to: ResolvedTarget(hub: "h", recipient: .all))
                } catch let f as DeliveryFailure {
                    failures.append(f)
                }
            }
            try await client.shutdown()
            #expect(
                failures.map(\.kind) == [
                    .retryable(retryAfter: .seconds(1)), .retryable(retryAfter: nil), .retryable(retryAfter: nil), .permanent, .permanent, .permanent,
                    .permanent, .permanent,
                ])
            #expect(failures.map(\.status) == [429, 503, 408, 400, 404, 413, 401, 403])
            // 401 and 403 are not the message's: they pause the route instead of dead-lettering it.
            let conditions = RouteConditions()
            let paused = failures.map { conditions.failed(route: "r", $0) != nil }
            #expect(paused == [false, false, false, false, false, false, true, true])
        }
    }
}

@Suite struct ProgressLineTests {
    @Test func summarisesTheDispatcher() {
        let stats = DispatchStats()
        stats.received.add(1200, ordering: .relaxed)
        stats.delivered.add(1190, ordering: .relaxed)
        stats.retried.add(3, ordering: .relaxed)
        stats.deadLettered.add(2, ordering: .relaxed)
        #expect(
            ProgressReporter.line(stats: stats, inFlight: 8, rate: 249.6)
                == "wps-bridge: 1200 in (250/s), 1190 delivered, 3 retried, 2 dead-lettered, 8 in flight")
    }

    @Test func showsMessagesPerSendWhenBatching() {
        let stats = DispatchStats()
        stats.received.add(1000, ordering: .relaxed)
        stats.delivered.add(900, ordering: .relaxed)
        stats.sends.add(12, ordering: .relaxed)
        stats.conflated.add(100, ordering: .relaxed)
        #expect(
            ProgressReporter.line(stats: stats, inFlight: 0, rate: 0)
                == "wps-bridge: 1000 in (0/s), 900 delivered in 12 sends (75.0 msg/send), 100 conflated, 0 retried, 0 dead-lettered, 0 in flight")
    }
}

@Suite struct RedactionTests {
    @Test(arguments: [
        ("GET ws://h/client/hubs/chat?access_token=eyJabc.def&x=1", "GET ws://h/client/hubs/chat?access_token=***&x=1"),
        ("url=http://b:8081/eventhandler/{hub}?code=s3cret", "url=http://b:8081/eventhandler/{hub}?code=***"),
        ("?awps_connection_id=c1&awps_reconnection_token=abc", "?awps_connection_id=c1&awps_reconnection_token=***"),
        ("Endpoint=https://x.webpubsub.azure.com;AccessKey=K3y/+=;Version=1.0;", "Endpoint=https://x.webpubsub.azure.com;AccessKey=***;Version=1.0;"),
        ("cannot connect to redis://app:hunter2@cache:6379/0", "cannot connect to redis://app:***@cache:6379/0"),
        ("redis://:hunter2@cache", "redis://:***@cache"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x.y", "Authorization: Bearer ***"),
        ("{\"password=\": 1} token=abc xcode=keep ?CODE=x", "{\"password=\": 1} token=*** xcode=keep ?CODE=***"),
        ("plain text, no secrets: https://example.com/a?b=c", "plain text, no secrets: https://example.com/a?b=c"),
        (
            "sasl.password=Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=S3cr3t=",
            "sasl.password=***;SharedAccessKeyName=app;SharedAccessKey=***"
        ),
        ("client_secret=abc&refresh_token=def", "client_secret=***&refresh_token=***"),
        ("Error Domain=NSCocoaErrorDomain Code=260 \"no file\"", "Error Domain=NSCocoaErrorDomain Code=260 \"no file\""),
        ("it needs a Bearer token here", "it needs a Bearer token here"),
        ("[redis://a@h,redis://u:p@h2]", "[redis://a@h,redis://u:***@h2]"),
    ])
    func hidesSecrets(input: String, expected: String) {
        #expect(Redaction.redact(input) == expected)
    }
}

@Suite struct SourceFingerprintTests {
    @Test func aRotatedSecretFileChangesTheSourcesFingerprint() throws {
        let dir = try TestEnvironment.temporaryDirectory()
        try "first-password".write(toFile: dir + "/redis.pw", atomically: true, encoding: .utf8)
        let yaml = """
            webpubsub: {connectionString: "Endpoint=http://h;AccessKey=k", hub: chat}
            sources:
              - {name: live, type: redis, url: "redis://127.0.0.1:6379", passwordFile: redis.pw, channels: [news]}
              - {name: in, type: stdin}
            routes:
              - {from: live, to: [{group: g}]}
              - {from: in, to: [{group: g}]}
            deadLetter: {type: stdout}
            """
        func fingerprints() throws -> [String: String] {
            Dictionary(uniqueKeysWithValues: try load(yaml, baseDirectory: dir).core.sources.map { ($0.name, $0.fingerprint) })
        }
        let before = try fingerprints()
        #expect(try fingerprints() == before, "stable for the same settings")
        try "second-password".write(toFile: dir + "/redis.pw", atomically: true, encoding: .utf8)
        let after = try fingerprints()
        #expect(after["live"] != before["live"], "a reload restarts the source with the new password")
        #expect(after["in"] == before["in"])
    }
}

/// `replicas:` and `coordination:` (issue 21).
@Suite struct CoordinationConfigurationTests {
    let webpubsub = "webpubsub: {connectionString: \"Endpoint=http://h;AccessKey=k\", hub: c}\n"
    let route = "routes: [{from: live, to: [{all: true}]}]\ndeadLetter: {type: drop}\n"

    @Test func aSourceEveryReplicaHearsIsLedThroughTheLease() throws {
        let c = try load(
            webpubsub + "coordination: {redis: {url: \"redis://127.0.0.1:6379\", key: k1, ttl: 3s}, id: a}\n"
                + "sources: [{name: live, type: redis, url: \"redis://127.0.0.1:6379\", channels: [x], replicas: many}]\n" + route)
        #expect(c.core.sources.first?.leaderOnly == true)
        let leadership = try #require(c.leadership)
        #expect(leadership.description.contains("lease 'k1'") && leadership.description.contains("as a"), "\(leadership.description)")
        #expect(!leadership.isLeader, "nothing is led before the bridge runs")
        // Wrapped for the dispatcher; a source of one replica is not.
        #expect(c.runnableSources(logger: Logger(label: "t")).first is LeaderOnlySource)
        let single = try load(webpubsub + "sources: [{name: live, type: redis, url: \"redis://h\", channels: [x]}]\n" + route)
        #expect(single.core.sources.first?.leaderOnly == false)
        #expect(!(single.runnableSources(logger: Logger(label: "t")).first is LeaderOnlySource))
    }

    @Test func manyReplicasOfAPubSubSourceNeedCoordination() {
        let found = issues(webpubsub + "sources:\n  - {name: live, type: redis, url: \"redis://h\", channels: [x], replicas: many}\n" + route)
        #expect(found.contains { $0.message.contains("needs a top-level 'coordination'") && $0.line == 3 }, "\(found)")
        let listener = issues(webpubsub + "sources:\n  - {name: live, type: webpubsub, hub: c, groups: [g], replicas: many}\n" + route)
        #expect(listener.contains { $0.message.contains("every replica hears all of source 'live' (webpubsub)") }, "\(listener)")
    }

    @Test func consumerGroupsNeedNoLeaseAndStdinHasNoReplicas() throws {
        let kafka = try load(
            webpubsub + "sources: [{name: live, type: kafka, brokers: \"k:9092\", topics: [t], group: g, replicas: many}]\n" + route)
        #expect(kafka.core.sources.first?.leaderOnly == false)
        #expect(kafka.leadership == nil)
        let stdin = issues(webpubsub + "sources: [{name: live, type: stdin, replicas: many}]\n" + route)
        #expect(stdin.contains { $0.message.contains("does not apply to a stdin source") }, "\(stdin)")
        let bad = issues(webpubsub + "sources: [{name: live, type: stdin, replicas: 3}]\n" + route)
        #expect(bad.contains { $0.message.contains("replicas must be 'one'") }, "\(bad)")
    }

    @Test func coordinationIsChecked() throws {
        let source = "sources: [{name: live, type: redis, url: \"redis://h\", channels: [x], replicas: many}]\n"
        let noBackend = issues(webpubsub + "coordination: {id: a}\n" + source + route)
        #expect(noBackend.contains { $0.message.contains("coordination needs 'redis: {url: ...}' or 'kafka: {brokers: ...}'") }, "\(noBackend)")
        let both = issues(webpubsub + "coordination: {redis: {url: \"redis://h\"}, kafka: {brokers: \"k:9092\"}}\n" + source + route)
        #expect(both.contains { $0.message.contains("not both") }, "\(both)")
        let kafka = try load(webpubsub + "coordination: {kafka: {brokers: \"k:9092\", topic: lease, ttl: 8s}, id: b}\n" + source + route)
        #expect(kafka.leadership?.description.contains("partition 0 of Kafka topic 'lease'") == true, "\(kafka.leadership?.description ?? "none")")
        let noBrokers = issues(webpubsub + "coordination: {kafka: {topic: lease}}\n" + source + route)
        #expect(noBrokers.contains { $0.message.contains("brokers") }, "\(noBrokers)")
        let badTTL = issues(webpubsub + "coordination: {redis: {url: \"redis://h\", ttl: 500ms}}\n" + source + route)
        #expect(badTTL.contains { $0.message.contains("ttl must be from 1s to 60s") }, "\(badTTL)")
        let badURL = issues(webpubsub + "coordination: {redis: {url: \"http://h\"}}\n" + source + route)
        #expect(!badURL.isEmpty)
        let unknown = issues(webpubsub + "coordination: {redis: {url: \"redis://h\"}, zookeeper: {}}\n" + source + route)
        #expect(unknown.contains { $0.message.contains("zookeeper") }, "\(unknown)")
        let unused = try load(
            webpubsub + "coordination: {redis: {url: \"redis://h\"}}\nsources: [{name: live, type: redis, url: \"redis://h\", channels: [x]}]\n"
                + route)
        #expect(unused.warnings.contains { $0.message.contains("nothing is led") }, "\(unused.warnings)")
    }
}

/// A source that emits `count` messages and returns.
struct CountingSource: SourceAdapter {
    let name = "counting"
    let count: Int
    let outcomes: Outcomes

    func run(emit: DeliveryEmitter) async throws {
        for i in 0..<count {
            let message = Message(payload: ByteBuffer(string: "\(i)"), dataType: .text, origin: Origin(source: name))
            try await emit.emit(Delivery(message: message) { outcome in outcomes.list.withLock { $0.append(outcome) } })
        }
    }
}

final class Outcomes: Sendable {
    let list = Mutex<[DeliveryOutcome]>([])
    var count: Int { list.withLock { $0.count } }
}

final class SwitchedLeadership: Leadership {
    let leads = Atomic<Bool>(false)
    var isLeader: Bool { leads.load(ordering: .relaxed) }
    var description: String { "switched" }
    func run() async throws {}
}

extension CoordinationConfigurationTests {
    @Test func aFollowerSettlesWhatItHearsAndForwardsNothing() async throws {
        let leadership = SwitchedLeadership()
        let outcomes = Outcomes()
        let forwarded = Atomic<Int>(0)
        let emit = DeliveryEmitter { _ in forwarded.add(1, ordering: .relaxed) }
        try await LeaderOnlySource(inner: CountingSource(count: 3, outcomes: outcomes), leadership: leadership).run(emit: emit)
        #expect(forwarded.load(ordering: .relaxed) == 0)
        #expect(outcomes.count == 3, "each is settled as done")
        leadership.leads.store(true, ordering: .relaxed)
        try await LeaderOnlySource(inner: CountingSource(count: 3, outcomes: outcomes), leadership: leadership).run(emit: emit)
        #expect(forwarded.load(ordering: .relaxed) == 3)
        #expect(outcomes.count == 3, "the leader's go to the dispatcher, which settles them")
    }
}
