import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import Logging
import Testing
import WebPubSub

let quietLogger = Logger(label: "hub-test") { _ in SwiftLogNoOpLogHandler() }

/// A hub in this process on a free port, for the length of `body`.
func withHub<T>(
    _ configure: (inout LocalHubConfiguration) -> Void = { _ in }, _ body: (LocalHub, ConnectionString) async throws -> T
) async throws -> T {
    var configuration = LocalHubConfiguration(accessKeys: [AccessKey("hub-test-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")])
    configuration.port = 0
    configure(&configuration)
    let hub = LocalHub(configuration: configuration, logger: quietLogger)
    let running = Task { try await hub.run() }
    let cs = try ConnectionString(parsing: try await hub.connectionString())
    do {
        let result = try await body(hub, cs)
        running.cancel()
        _ = try? await running.value
        return result
    } catch {
        running.cancel()
        _ = try? await running.value
        throw error
    }
}

/// A client socket with a token for `user`, `roles` and initial `groups`.
func connectClient(
    _ cs: ConnectionString, hub: String = "chat", user: String? = nil, roles: [String] = [], groups: [String] = [],
    subprotocol: String? = "json.webpubsub.azure.v1", extraQuery: String = ""
) async throws -> (socket: TestWebSocket, connectionId: String?) {
    let access = try ClientAccess.make(
        endpoint: cs.endpoint, hub: hub, key: cs.accessKey, userId: user, roles: roles, groups: groups, expiresIn: .seconds(600))
    let socket = try await TestWebSocket.connect(access.url + extraQuery, subprotocol: subprotocol)
    guard subprotocol != nil else { return (socket, nil) }
    let connected = await socket.expect(type: "system", event: "connected")
    return (socket, connected?["connectionId"]?.stringValue)
}
