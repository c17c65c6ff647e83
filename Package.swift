// swift-tools-version:6.2
import PackageDescription

// Our own targets: a warning fails the build, imports are internal unless marked `public
// import`, and a member is visible only where its module is imported.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "wps-bridge",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "wps-bridge", targets: ["wps-bridge"]),
        .executable(name: "wps-bench", targets: ["wps-bench"]),
        .plugin(name: "ValidateBridgeConfig", targets: ["ValidateBridgeConfig"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams.git", "5.0.0"..<"7.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.30.0"),
        // Already in the graph through async-http-client: named for the data-plane client's TLS.
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.29.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.20.0", traits: []),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.22.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        // The protobuf client subprotocols (LocalHub/Protobuf): the runtime only; the generated code is committed.
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    ],
    targets: [
        // OData filter expressions: parsed once, evaluated against any set of fields.
        .target(name: "ODataFilter", swiftSettings: swiftSettings),
        // A JSON value type that keeps numbers as written, with a fast parser: payloads are forwarded byte for byte.
        .target(name: "BridgeJSON", swiftSettings: swiftSettings),
        // The YAML config reader with its one-pass report (path, line, suggestion): every module
        // that has settings reads them with it.
        .target(
            name: "BridgeConfig",
            dependencies: ["BridgeJSON", .product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        // What the Web PubSub service defines that every side of it checks: the name rules.
        .target(name: "WebPubSubProtocol", swiftSettings: swiftSettings),
        // Log keys, metric names and log throttling: what every module logs and counts with.
        .target(
            name: "BridgeObservability",
            dependencies: [.product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "BridgeCore",
            dependencies: [
                "BridgeConfig", "WebPubSubProtocol", "BridgeObservability", "ODataFilter", "BridgeJSON",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // Entra ID credentials: client secret, workload identity, managed identity, the default chain.
        .target(
            name: "AzureIdentity",
            dependencies: [
                "BridgeConfig", "BridgeObservability", "BridgeJSON",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // libcrypto from the system's OpenSSL 3 (libssl-dev; librdkafka loads the same library).
        .systemLibrary(name: "CLibCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // HMAC-SHA256, constant-time comparison and RS256 on CLibCrypto: all the cryptography we need.
        .target(name: "BridgeCrypto", dependencies: ["CLibCrypto"], swiftSettings: swiftSettings),
        .target(
            name: "WebPubSub",
            dependencies: [
                "WebPubSubProtocol", "BridgeObservability", "BridgeJSON", "AzureIdentity", "BridgeCrypto",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "StdioAdapter",
            dependencies: [
                "BridgeConfig", "BridgeObservability", "BridgeCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // librdkafka >= 2.2 from the system (scripts/bootstrap builds it on Debian 12, whose 2.0.2 is too old).
        .systemLibrary(name: "CRdKafka", pkgConfig: "rdkafka", providers: [.apt(["librdkafka-dev"])]),
        // Kafka source (consumer group, at least once) and sink (idempotent producer).
        .target(
            name: "KafkaAdapter",
            dependencies: [
                "BridgeConfig", "BridgeObservability", "CRdKafka", "BridgeCore", "BridgeJSON",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // hiredis 1.x with TLS (hiredis_ssl) on the system's OpenSSL. Debian 12 ships 0.14 (no TLS):
        // scripts/bootstrap builds Debian 13's source package into /usr/local there.
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis_ssl", providers: [.apt(["libhiredis-dev", "libssl-dev"])]),
        // glibc's mallopt, for the executable's malloc arenas.
        .systemLibrary(name: "CMalloc"),
        // Redis pub/sub and Streams sources, PUBLISH and XADD sinks; blocking calls on threads of their own.
        .target(
            name: "RedisAdapter",
            dependencies: [
                "BridgeConfig", "BridgeObservability", "CHiredis", "BridgeCore", "BridgeJSON",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // Header deadline, idle timeout and connection cap for the HTTP servers strangers reach.
        .target(
            name: "HTTPGuards",
            dependencies: [
                "BridgeConfig", "BridgeObservability", .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The embedded Web PubSub-compatible hub.
        .target(
            name: "LocalHub",
            dependencies: [
                "BridgeConfig", "WebPubSubProtocol", "BridgeObservability", "BridgeJSON", "BridgeCrypto", "WebPubSub", "ODataFilter", "HTTPGuards",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Protobuf/webpubsub_v1.proto"],
            swiftSettings: swiftSettings
        ),
        // The bridge's HTTP listener: the upstream event handler (client events mirrored into sinks), health.
        .target(
            name: "BridgeServer",
            dependencies: [
                "BridgeConfig", "WebPubSubProtocol", "BridgeObservability", "BridgeCore", "BridgeJSON", "BridgeCrypto", "WebPubSub", "HTTPGuards",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // `type: webpubsub`: a client on json.reliable.webpubsub.azure.v1 that listens to groups.
        .target(
            name: "GroupListener",
            dependencies: [
                "BridgeConfig", "WebPubSubProtocol", "BridgeObservability", "BridgeCore", "BridgeJSON", "WebPubSub",
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),
        // Wiring: config -> sources, routes, dispatcher and the Web PubSub transport.
        .target(
            name: "BridgeApp",
            dependencies: [
                "BridgeConfig", "WebPubSubProtocol", "BridgeObservability", "BridgeCore", "BridgeJSON", "WebPubSub", "AzureIdentity", "StdioAdapter",
                "KafkaAdapter",
                "RedisAdapter",
                "LocalHub", "BridgeServer",
                "GroupListener", "HTTPGuards",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "wps-bridge",
            dependencies: [
                "BridgeConfig", "WebPubSubProtocol", "BridgeObservability", "CMalloc",
                "BridgeApp", "BridgeCore", "BridgeCrypto", "WebPubSub", "AzureIdentity", "LocalHub", "KafkaAdapter", "RedisAdapter",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Swift half of `make bench`: counting subscribers, the fan-out, the REST load generator.
        .executableTarget(
            name: "wps-bench",
            dependencies: [
                "WebPubSub", "BridgeJSON",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // `swift package validate-config [FILE]`. It asks SwiftPM to build the wps-bridge product
        // when it runs: a plugin that depended on the executable target would make every
        // `swift build` compile a second, host-tool copy of the whole graph.
        .plugin(
            name: "ValidateBridgeConfig",
            capability: .command(intent: .custom(verb: "validate-config", description: "Check a wps-bridge config file"))
        ),
        // Test helpers: a recording HTTP server, free ports, child processes. Used by tests only.
        .target(
            name: "BridgeTestSupport",
            dependencies: [
                "WebPubSub",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                "BridgeCrypto", "BridgeJSON",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "ODataFilterTests", dependencies: ["ODataFilter", "BridgeJSON"], swiftSettings: swiftSettings),
        .testTarget(
            name: "BridgeCoreTests",
            dependencies: [
                "BridgeTestSupport", "BridgeObservability", "BridgeCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "WebPubSubTests",
            dependencies: [
                "WebPubSub", "AzureIdentity", "BridgeTestSupport", "BridgeJSON",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LocalHubTests",
            dependencies: [
                .product(name: "HummingbirdTesting", package: "hummingbird"), "LocalHub", "BridgeTestSupport", "WebPubSub", "BridgeJSON",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "AzureIdentityTests", dependencies: ["AzureIdentity"], swiftSettings: swiftSettings),
        .testTarget(
            name: "BridgeCryptoTests", dependencies: ["BridgeCrypto", "BridgeTestSupport", "BridgeJSON", "WebPubSub"], swiftSettings: swiftSettings),
        .testTarget(name: "BridgeJSONTests", dependencies: ["BridgeJSON"], swiftSettings: swiftSettings),
        .testTarget(
            name: "BridgeAppTests",
            dependencies: [
                "BridgeApp", "BridgeCore", "WebPubSub", "BridgeTestSupport", "HTTPGuards", .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "StdioAdapterTests",
            dependencies: [
                "StdioAdapter", "BridgeCore", "BridgeJSON", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KafkaAdapterTests",
            dependencies: [
                "KafkaAdapter", "BridgeCore", "BridgeTestSupport", "BridgeJSON", "WebPubSub",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RedisAdapterTests",
            dependencies: [
                "RedisAdapter", "BridgeCore", "BridgeTestSupport", "BridgeJSON", "WebPubSub",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "BridgeServerTests",
            dependencies: [
                "BridgeServer", "BridgeCore", "BridgeJSON", "WebPubSub", "BridgeTestSupport", "HTTPGuards",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "GroupListenerTests",
            dependencies: [
                "GroupListener", "BridgeCore", "BridgeJSON", "WebPubSub", "LocalHub", "BridgeTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["BridgeTestSupport", "WebPubSub", "BridgeCore"],
            swiftSettings: swiftSettings
        ),
    ]
)
