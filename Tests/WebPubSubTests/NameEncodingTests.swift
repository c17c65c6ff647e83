import BridgeJSON
import BridgeTestSupport
import Foundation
import NIOCore
import Testing

@testable import WebPubSub

/// Names taken from messages (`{json.userId}`) end up in request paths: each must stay one
/// path segment, whatever it holds, and a name the service cannot have is refused before any
/// request.
@Suite struct NameEncodingTests {
    /// Names that would change the request if written as they are.
    static let hostileNames = [
        ":send", "a/b", "a?b=c&d=e", "100%", "%2e%2e", "with space", "日本語 ü", ":x/../../:send?filter=x&", "a#b", "...", " .",
    ]

    func client(_ server: RecordingServer) throws -> WebPubSubServiceClient {
        WebPubSubServiceClient(connectionString: try ConnectionString(parsing: server.connectionString))
    }

    func callWithName(_ c: WebPubSubServiceClient, _ name: String) async throws {
        try await c.sendToGroup(hub: "chat", group: name, payload: ByteBuffer(string: "x"), contentType: "text/plain")
        try await c.sendToUser(hub: "chat", userId: name, payload: ByteBuffer(string: "x"), contentType: "text/plain")
        try await c.sendToConnection(hub: "chat", connectionId: name, payload: ByteBuffer(string: "x"), contentType: "text/plain")
        try await c.addUserToGroup(hub: "chat", group: name, userId: name)
        try await c.removeConnectionFromGroup(hub: "chat", group: name, connectionId: name)
    }

    @Test func everyNameIsOneEncodedPathSegment() async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            for name in Self.hostileNames { try await callWithName(c, name) }
            try await c.shutdown()
            let requests = server.requests
            #expect(requests.count == Self.hostileNames.count * 5)
            for (index, request) in requests.enumerated() {
                let name = Self.hostileNames[index / 5]
                #expect(request.authError == nil, "\(request): \(request.authError ?? "")")
                // Only api-version in the query: nothing of the name leaked into it.
                #expect(request.query.map(\.name) == ["api-version"], "\(name): \(request.url)")
                let expected: [String] =
                    switch index % 5 {
                    case 0: ["api", "hubs", "chat", "groups", name, ":send"]
                    case 1: ["api", "hubs", "chat", "users", name, ":send"]
                    case 2: ["api", "hubs", "chat", "connections", name, ":send"]
                    case 3: ["api", "hubs", "chat", "users", name, "groups", name]
                    default: ["api", "hubs", "chat", "groups", name, "connections", name]
                    }
                #expect(request.segments == expected, "\(name): \(request.rawPath)")
                // Every byte of the name that is not unreserved is escaped, `:` and `.` runs included.
                #expect(!request.rawPath.contains("/:x"), "\(request.rawPath)")
                #expect(!request.rawPath.contains("/../"), "\(request.rawPath)")
            }
        }
    }

    @Test(arguments: [
        ("group", ".."), ("group", "."), ("group", ""), ("group", "   "), ("group", String(repeating: "g", count: 1025)),
        ("user", ".."), ("user", "."), ("user", ""), ("user", "\t "),
        ("connection", ".."), ("connection", ""), ("hub", ".."), ("hub", "a/b"), ("hub", "1chat"), ("hub", ""),
        ("hub", String(repeating: "h", count: 129)),
    ])
    func namesTheServiceCannotHaveAreRefusedBeforeAnyRequest(kind: String, name: String) async throws {
        try await withRecordingServer { server in
            let c = try client(server)
            let payload = ByteBuffer(string: "x")
            let error = await #expect(throws: WebPubSubError.self) {
                switch kind {
                case "group": try await c.sendToGroup(hub: "chat", group: name, payload: payload, contentType: "text/plain")
                case "user": try await c.sendToUser(hub: "chat", userId: name, payload: payload, contentType: "text/plain")
                case "connection": try await c.closeConnection(hub: "chat", connectionId: name)
                default: try await c.sendToAll(hub: name, payload: payload, contentType: "text/plain")
                }
            }
            try await c.shutdown()
            #expect(error?.kind == .invalidArgument, "\(String(describing: error))")
            #expect(error?.isRetryable == false)
            #expect(server.requests.isEmpty, "\(server.requests)")
        }
    }

    /// The official Python SDK encodes the same names into the same bytes.
    @Test func namesAreEncodedAsThePythonSDKEncodesThem() async throws {
        let python = try TestEnvironment.python()
        let names = Self.hostileNames.filter { $0 != "..." && $0 != " ." }
        let list = JSONValue.array(names.map { .string($0) }).serialized
        try await withRecordingServer { sdkServer in
            try await withRecordingServer { ourServer in
                let result = try await runProcess(
                    python, [TestEnvironment.packageRoot + "/Tests/python/sdk_conformance.py", "names", sdkServer.connectionString, "chat", list])
                #expect(result.status == 0, "the SDK failed: \(result.stderr)")
                let c = try client(ourServer)
                for name in names { try await callWithName(c, name) }
                try await c.shutdown()
                let theirs = sdkServer.requests
                let ours = ourServer.requests
                #expect(theirs.count == names.count * 5)
                #expect(ours.count == theirs.count)
                for (sdk, us) in zip(theirs, ours) {
                    #expect(us.method == sdk.method)
                    #expect(us.rawPath == sdk.rawPath)
                }
            }
        }
    }
}
