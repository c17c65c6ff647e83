import BridgeJSON
import BridgeTestSupport
import Foundation
import LocalHub
import NIOCore
import Testing
import WebPubSub
import WebPubSubProtocol

/// The demo page in headless Chromium: it negotiates, joins its group, and shows what the REST
/// API sends, as a person sees it; and what the person types reaches the group.
@Suite(.serialized) struct DemoPageTests {
    @Test func aRESTSendAppearsOnThePage() async throws {
        try await withHub({ $0.negotiate = true }) { _, cs in
            let browser = try await Browser.start()
            do {
                try await browser.navigate(cs.endpoint + "/?hub=chat&group=demo")
                #expect(try await browser.waitFor("document.getElementById('status').dataset.joined === 'true'"), "the page did not join its group")
                let client = WebPubSubServiceClient(connectionString: cs)
                try await client.sendToGroup(hub: "chat", group: "demo", payload: ByteBuffer(string: "hello, browser"), contentType: "text/plain")
                try await client.sendToGroup(
                    hub: "chat", group: "demo", payload: ByteBuffer(string: #"{"price": 42}"#), contentType: "application/json")
                #expect(try await browser.waitFor("document.body.innerText.includes('hello, browser')"))
                #expect(try await browser.waitFor("document.body.innerText.includes('{\"price\":42}')"))
                let types = try await browser.evaluate("[...document.querySelectorAll('#messages li')].map(li => li.dataset.type).join(',')")
                #expect(types == .string("json,text"))
                let meta = try await browser.evaluate("document.querySelector('#messages li .meta').textContent")
                #expect(meta.stringValue?.contains("group demo") == true)

                // A batch of the bridge shows as its messages, one by one.
                try await client.sendToGroup(
                    hub: "chat", group: "demo", payload: ByteBuffer(string: #"[{"px":1},"tick two"]"#), contentType: "application/json",
                    metadata: [MetadataEntry(key: "batch", value: "2")])
                #expect(try await browser.waitFor("document.body.innerText.includes('tick two')"))
                let batch = try await browser.evaluate(
                    "[...document.querySelectorAll('#messages li')].slice(0, 2).map(li => li.dataset.type + ' ' + li.textContent).join('|')")
                #expect(batch.stringValue?.contains("batch 2/2 · texttick two|") == true, "\(batch)")
                #expect(batch.stringValue?.contains(#"batch 1/2 · json{"px":1}"#) == true, "\(batch)")

                // What the person sends reaches the group.
                let (listener, _) = try await connectClient(cs, user: "listener", groups: ["demo"])
                _ = try await browser.evaluate(
                    "document.getElementById('text').value = 'typed in the page'; document.querySelector('#send button').click(); true")
                let typed = await listener.expect(type: "message")
                #expect(typed?["data"] == .string("typed in the page") && typed?["group"] == .string("demo"))
                try await client.shutdown()
            } catch {
                await browser.close()
                throw error
            }
            await browser.close()
        }
    }
}
