import AsyncHTTPClient
import BridgeJSON
import BridgeTestSupport
import Foundation
import NIOCore
import NIOHTTP1
import Testing
import WebPubSub

@testable import LocalHub

/// `GET /negotiate` signs a client token for whoever asks: only when the hub was started with
/// it, and only within the service's name rules.
@Suite struct NegotiateTests {
    func get(_ url: String) async throws -> (status: Int, body: String) {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            let response = try await client.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 1 << 20)
            try await client.shutdown()
            return (Int(response.status.code), String(buffer: body))
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    @Test func offByDefault() async throws {
        try await withHub { _, cs in
            for path in ["/negotiate?hub=chat&group=demo", "/", "/index.html"] {
                let (status, body) = try await get(cs.endpoint + path)
                #expect(status == 404, "\(path): \(body)")
                #expect(body.contains("--negotiate"), "\(body)")
            }
        }
    }

    @Test func onItSignsATokenForOneGroupOnly() async throws {
        try await withHub({ $0.negotiate = true }) { _, cs in
            let (status, body) = try await get(cs.endpoint + "/negotiate?hub=chat&group=demo&userId=ann")
            #expect(status == 200, "\(body)")
            let token = try #require(try JSONValue(parsing: body)["token"]?.stringValue)
            let claims = try AccessKeyJWT.verify(token, keys: [cs.accessKey])
            #expect(claims.subject == "ann")
            #expect(Set(claims.roles) == ["webpubsub.joinLeaveGroup.demo", "webpubsub.sendToGroup.demo"])
            #expect(claims.groups.isEmpty)
            #expect(try await get(cs.endpoint + "/").status == 200)
        }
    }

    @Test(arguments: ["hub=1chat", "hub=chat&group=..", "hub=chat&group=%20%20", "hub=chat&userId=..", "group=demo", "hub=a%2Fb"])
    func badNamesAreRefused(query: String) async throws {
        try await withHub({ $0.negotiate = true }) { _, cs in
            let (status, body) = try await get(cs.endpoint + "/negotiate?" + query)
            #expect(status == 400, "\(query): \(body)")
        }
    }

    /// Hub names are the client's to choose (anonymous clients, negotiate): past a limit they
    /// share one metric label.
    @Test func hubMetricLabelsAreBounded() {
        let labels = HubMetricLabels(limit: 3)
        #expect(labels.label("a") == "a")
        #expect(labels.label("b") == "b")
        #expect(labels.label("c") == "c")
        #expect(labels.label("a") == "a")
        for i in 0..<1000 { #expect(labels.label("stranger\(i)") == "_other") }
        #expect(labels.labels == ["a", "b", "c", "_other"])
    }

    @Test func closeReasonsFitAControlFrame() {
        #expect(closeReason("short") == "short")
        let ascii = String(repeating: "x", count: 200)
        #expect(closeReason(ascii).utf8.count == 123)
        // 3-byte characters: 41 of them are 123 bytes; a cut never splits one.
        let wide = String(repeating: "日", count: 60)
        #expect(closeReason(wide) == String(repeating: "日", count: 41))
        let mixed = "xx" + String(repeating: "é", count: 70)
        #expect(closeReason(mixed).utf8.count == 122)
        #expect(String(validating: Array(closeReason(mixed).utf8), as: UTF8.self) != nil)
    }
}
