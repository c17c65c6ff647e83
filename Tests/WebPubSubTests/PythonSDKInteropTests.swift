import BridgeJSON
import BridgeTestSupport
import Foundation
import Testing
import WebPubSubProtocol

@testable import WebPubSub

/// Our tokens and requests against those of the official `azure-messaging-webpubsubservice`
/// Python SDK, for the same key, URLs and times.
@Suite struct PythonSDKInteropTests {
    static let script = TestEnvironment.packageRoot + "/Tests/python/sdk_conformance.py"

    /// For every client protocol: the Python SDK's `client_protocol` and our `clientType` give
    /// the same token bytes and URL (`/client/hubs/`, `/clients/mqtt/hubs/`, `/clients/socketio/hubs/`).
    @Test(arguments: [(ClientType.default, "Default"), (.mqtt, "mqtt"), (.socketIO, "SocketIO")])
    func clientTokenIsTheSDKsToken(clientType: ClientType, sdkName: String) async throws {
        let python = try TestEnvironment.python()
        let key = AccessKey("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH")
        let cs = "Endpoint=https://Contoso.webpubsub.azure.com;AccessKey=\(key.value);Version=1.0;"
        let result = try await runProcess(python, [Self.script, "token", cs, "chat", sdkName])
        #expect(result.status == 0, "\(result.stderr)")
        let sdk = try JSONValue(parsing: result.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let sdkToken = try #require(sdk["token"]?.stringValue)
        let claims = try AccessKeyJWT.verify(sdkToken, keys: [key])
        let issued = try #require(claims.issuedAt)
        let expiry = try #require(claims.expiry)
        let ours = try ClientAccess.make(
            endpoint: try ConnectionString(parsing: cs).endpoint, hub: "chat", key: key, userId: "user 1",
            roles: ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.chat"], groups: ["chat", "news"],
            expiresIn: .seconds(Int64(expiry.timeIntervalSince(issued))), clientType: clientType, now: issued)
        // Same header, claims, order and signature: the same bytes.
        #expect(ours.token == sdkToken)
        #expect(ours.baseURL == sdk["baseUrl"]?.stringValue)
        #expect(ours.url == sdk["url"]?.stringValue)
        #expect(ours.baseURL.hasSuffix(clientType.hubsPath + "chat"))
    }

    @Test func everyOperationMatchesTheSDKsRequest() async throws {
        let python = try TestEnvironment.python()
        try await withRecordingServer { sdkServer in
            try await withRecordingServer { ourServer in
                let result = try await runProcess(python, [Self.script, "operations", sdkServer.connectionString, "chat"])
                #expect(result.status == 0, "the SDK refused a response: \(result.stderr)")
                let client = WebPubSubServiceClient(connectionString: try ConnectionString(parsing: ourServer.connectionString))
                try await ServiceClientTests.callEveryOperation(client, hub: "chat")
                try await client.shutdown()

                let theirs = sdkServer.requests
                let ours = ourServer.requests
                #expect(theirs.count == ours.count)
                for (sdk, us) in zip(theirs, ours) {
                    #expect(sdk.authError == nil, "the SDK's token was refused: \(sdk.authError ?? "")")
                    #expect(us.method == sdk.method, "\(sdk)")
                    #expect(us.rawPath == sdk.rawPath)
                    #expect(us.query.map { "\($0.name)=\($0.value)" }.sorted() == sdk.query.map { "\($0.name)=\($0.value)" }.sorted(), "\(sdk)")
                    let sdkType = sdk.headers["content-type"]?.split(separator: ";").first.map(String.init)
                    #expect(us.headers["content-type"] == sdkType, "\(sdk)")
                    if sdkType == "application/json" {
                        #expect(try JSONValue.parse(us.body) == JSONValue.parse(sdk.body), "\(sdk)")
                    } else {
                        #expect(us.body == sdk.body, "\(sdk)")
                    }
                }
                // The REST token: the SDK signs {aud: URL, exp}; for its URL and expiry, ours is byte-identical.
                let sdkFirst = try #require(theirs.first)
                let sdkToken = String(try #require(sdkFirst.headers["authorization"]).dropFirst("Bearer ".count))
                let claims = try #require(sdkFirst.claims)
                let expiry = try #require(claims.expiry)
                #expect(AccessKeyJWT.restToken(url: sdkFirst.url, key: sdkServer.accessKey, expiry: expiry) == sdkToken)
            }
        }
    }
}
