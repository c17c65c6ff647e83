import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import NIOCore
import NIOPosix
import Testing
import WebPubSub

@Suite struct SlowClientTests {
    /// A client that stops reading is disconnected once a few megabytes wait for it, and the
    /// other members of its group go on getting every message.
    @Test func aClientThatDoesNotReadIsDisconnected() async throws {
        try await withHub { _, cs in
            let client = WebPubSubServiceClient(connectionString: cs)
            defer { Task { try? await client.shutdown() } }
            let (reader, _) = try await connectClient(cs, user: "reader", groups: ["g"])
            let stalled = try await stalledClient(cs, user: "stalled", groups: ["g"])
            defer { stalled.close(promise: nil) }
            let deadline = ContinuousClock.now + .seconds(10)
            while try await !client.userExists(hub: "chat", userId: "stalled") {
                #expect(ContinuousClock.now < deadline, "the stalled client never joined")
                if ContinuousClock.now >= deadline { return }
                try await Task.sleep(for: .milliseconds(20))
            }

            // 64 KiB messages: the socket buffers and the hub's 4 MiB limit fill after a few hundred.
            let payload = ByteBuffer(repeating: UInt8(ascii: "x"), count: 64 * 1024)
            var sent = 0
            while sent < 2000, try await client.userExists(hub: "chat", userId: "stalled") {
                try await client.sendToGroup(hub: "chat", group: "g", payload: payload, contentType: "text/plain")
                sent += 1
            }
            #expect(sent < 2000, "a client that reads nothing was kept for \(sent) messages of 64 KiB")
            #expect(try await client.userExists(hub: "chat", userId: "reader"))

            var received = 0
            while received < sent, let m = await reader.expect(type: "message") {
                #expect(m["data"]?.stringValue?.utf8.count == 64 * 1024)
                received += 1
            }
            #expect(received == sent)
            await reader.close()
        }
    }

    /// Completes a WebSocket handshake on a raw socket and never reads anything after.
    func stalledClient(_ cs: ConnectionString, user: String, groups: [String]) async throws -> any Channel {
        let access = try ClientAccess.make(
            endpoint: cs.endpoint, hub: "chat", key: cs.accessKey, userId: user, roles: [], groups: groups, expiresIn: .seconds(600))
        let url = try #require(URL(string: access.url))
        let host = try #require(url.host)
        let port = try #require(url.port)
        let query = try #require(url.query)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(ChannelOptions.autoRead, value: false)
            .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 8192)
            .connect(host: host, port: port).get()
        let request =
            "GET \(url.path)?\(query) HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + "Sec-WebSocket-Protocol: json.webpubsub.azure.v1\r\n\r\n"
        try await channel.writeAndFlush(ByteBuffer(string: request))
        return channel
    }
}
