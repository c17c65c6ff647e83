import BridgeCore
import BridgeJSON
import BridgeTestSupport
import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import WebPubSub
import WebPubSubProtocol

@testable import BridgeServer

let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
let key = AccessKey("handler-test-key-0123456789")

final class MemorySink: SinkAdapter {
    let records = Mutex<[SinkRecord]>([])
    let failing = Atomic<Bool>(false)
    var description: String { "memory" }
    func write(_ record: SinkRecord) async throws {
        if failing.load(ordering: .relaxed) { throw CancellationError() }
        records.withLock { $0.append(record) }
    }
    var written: [SinkRecord] { records.withLock { $0 } }
}

func handler(
    rules: [(String, Set<String>, EventRule.Reply)] = [("chat", ["*"], .empty)], connect: ConnectPolicy? = nil, token: String? = nil,
    keys: [AccessKey] = [key]
) -> (EventHandler, MemorySink) {
    let sink = MemorySink()
    var config = EventHandlerConfiguration()
    config.accessKeys = keys
    config.allowedOrigins = ["myhub.webpubsub.azure.com"]
    config.authToken = token
    config.connect = connect
    config.rules = rules.map { EventRule(hub: $0.0, events: $0.1, sink: sink, reply: $0.2) }
    return (EventHandler(configuration: config, logger: quiet), sink)
}

/// A request as the service sends it.
func event(
    _ type: String, name: String, hub: String = "chat", connection: String = "conn-1", user: String? = "alice", body: String = "",
    contentType: String = "application/json", signedWith: AccessKey = key, query: String? = nil, drop: String? = nil
) -> HandlerRequest {
    var headers = [
        "ce-specversion": "1.0", "ce-id": "evt-1", "ce-type": type, "ce-source": "/hubs/\(hub)/client/\(connection)",
        "ce-time": "2026-11-29T10:00:00Z",
        "ce-hub": hub, "ce-connectionid": connection, "ce-eventname": name, "ce-awpsversion": "1.0",
        "ce-signature": EventSignature.header(connectionId: connection, keys: [signedWith]), "content-type": contentType,
    ]
    if let user { headers["ce-userid"] = user }
    if let drop { headers[drop] = nil }
    return HandlerRequest(method: "POST", hub: hub, headers: headers, query: Query(query), body: Array(body.utf8))
}

func text(_ r: HandlerResponse) -> String { String(decoding: r.body, as: UTF8.self) }

@Suite struct EventHandlerTests {
    @Test func aUserEventBecomesACloudEventsEnvelope() async throws {
        let (h, sink) = handler()
        let r = await h.handle(event("azure.webpubsub.user.chat", name: "chat", body: #"{"text":"hi"}"#))
        #expect(r.status == 204)
        let record = try #require(sink.written.first)
        let envelope = try JSONValue.parse(record.payload.readableBytesView)
        #expect(envelope["specversion"] == .string("1.0"))
        #expect(envelope["type"] == .string("azure.webpubsub.user.chat"))
        #expect(envelope["id"] == .string("evt-1"))
        #expect(envelope["source"] == .string("/hubs/chat/client/conn-1"))
        #expect(envelope["datacontenttype"] == .string("application/json"))
        #expect(envelope["data"]?["text"] == .string("hi"))
        #expect(envelope["userid"] == .string("alice") && envelope["connectionid"] == .string("conn-1") && envelope["eventname"] == .string("chat"))
        #expect(envelope["hub"] == .string("chat"))
        #expect(record.key == "alice")
        #expect(record.headers["userId"] == "alice" && record.headers["event"] == "chat" && record.headers["wps-mirrored-from"] == "chat")
    }

    @Test func textAndBinaryData() async throws {
        let (h, sink) = handler()
        _ = await h.handle(event("azure.webpubsub.user.note", name: "note", body: "plain words", contentType: "text/plain; charset=utf-8"))
        _ = await h.handle(event("azure.webpubsub.user.blob", name: "blob", body: "\u{1}\u{2}", contentType: "application/octet-stream"))
        let envelopes = try sink.written.map { try JSONValue.parse($0.payload.readableBytesView) }
        #expect(envelopes[0]["data"] == .string("plain words") && envelopes[0]["datacontenttype"] == .string("text/plain"))
        #expect(envelopes[1]["data_base64"] == .string("AQI=") && envelopes[1]["data"] == nil)
    }

    @Test func ackReplyComesAfterTheSinkAndAFailingSinkIs500() async {
        let (h, sink) = handler(rules: [("chat", ["order"], .ack)])
        let ok = await h.handle(event("azure.webpubsub.user.order", name: "order", body: "{}"))
        #expect(ok.status == 200)
        #expect(text(ok) == #"{"ack":"evt-1","event":"order"}"#)
        sink.failing.store(true, ordering: .relaxed)
        let failed = await h.handle(event("azure.webpubsub.user.order", name: "order", body: "{}"))
        #expect(failed.status == 500)
        // An event no rule wants is answered, and written nowhere.
        sink.failing.store(false, ordering: .relaxed)
        let other = await h.handle(event("azure.webpubsub.user.other", name: "other", body: "{}"))
        #expect(other.status == 204)
        #expect(sink.written.count == 1)
    }

    /// `reply: {text: ...}` and `reply: {json: ...}` fill their fields per event; a field's value
    /// is a JSON string, so a hostile user id cannot change the reply's shape.
    @Test func templatedRepliesFillTheirFields() async throws {
        let json: JSONValue = .object([
            ("received", .string("{event}")), ("by", .string("{userId}")), ("n", .number("1")), ("at", .array([.string("{hub}/{connectionId}")])),
        ])
        let (h, _) = handler(rules: [("chat", ["order"], .json(json)), ("chat", ["note"], .text("got {event} ({id}) from {userId}"))])
        let ordered = await h.handle(event("azure.webpubsub.user.order", name: "order", body: "{}"))
        #expect(ordered.status == 200)
        let reply = try JSONValue.parse(ordered.body)
        #expect(reply["received"] == .string("order") && reply["n"] == .number("1"))
        #expect(reply["by"] == .string("alice") && reply["at"] == .array([.string("chat/conn-1")]), "\(reply.serialized)")
        let noted = await h.handle(event("azure.webpubsub.user.note", name: "note", body: "{}"))
        #expect(text(noted) == "got note (evt-1) from alice")
        #expect(noted.headers.contains { $0.0 == "Content-Type" && $0.1.hasPrefix("text/plain") })
        let hostile = ReplyTemplate(values: ["userId": #"x", "admin": true, "y": ""#]).render(json)
        #expect(hostile["by"] == .string(#"x", "admin": true, "y": ""#) && hostile["admin"] == nil)
    }

    @Test func forgedOrMalformedRequestsAreRefusedAndWriteNothing() async {
        let (h, sink) = handler(token: "s3cret")
        let user = "azure.webpubsub.user.chat"
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=s3cret")).status == 204)
        #expect(await h.handle(event(user, name: "chat", body: "{}")).status == 401)
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=wrong")).status == 401)
        #expect(
            await h.handle(event(user, name: "chat", body: "{}", signedWith: AccessKey("another-key-000000000"), query: "code=s3cret")).status == 401)
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=s3cret", drop: "ce-signature")).status == 401)
        #expect(await h.handle(event(user, name: "chat", hub: "other", body: "{}", query: "code=s3cret")).status == 404)
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=s3cret", drop: "ce-connectionid")).status == 400)
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=s3cret", drop: "ce-specversion")).status == 400)
        #expect(await h.handle(event(user, name: "chat", body: "{not json", query: "code=s3cret")).status == 400)
        #expect(await h.handle(event("azure.webpubsub.other", name: "chat", body: "{}", query: "code=s3cret")).status == 400)
        var mismatched = event(user, name: "chat", body: "{}", query: "code=s3cret")
        mismatched.headers["ce-hub"] = "elsewhere"
        #expect(await h.handle(mismatched).status == 400)
        #expect(sink.written.count == 1)
    }

    /// With Entra ID the bridge has no key: the auth token alone authenticates the hub, and
    /// without one nothing is accepted.
    @Test func withoutAccessKeysTheAuthTokenDecides() async {
        let user = "azure.webpubsub.user.chat"
        let (h, sink) = handler(token: "s3cret", keys: [])
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=s3cret", drop: "ce-signature")).status == 204)
        #expect(await h.handle(event(user, name: "chat", body: "{}", drop: "ce-signature")).status == 401)
        #expect(await h.handle(event(user, name: "chat", body: "{}", query: "code=wrong")).status == 401)
        #expect(sink.written.count == 1)
        let (open, openSink) = handler(token: nil, keys: [])
        #expect(await open.handle(event(user, name: "chat", body: "{}")).status == 401)
        #expect(openSink.written.isEmpty)
    }

    @Test func abuseProtectionHandshake() async {
        let (h, _) = handler()
        var options = HandlerRequest(
            method: "OPTIONS", hub: "chat", headers: ["webhook-request-origin": "myhub.webpubsub.azure.com"], query: Query(nil), body: [])
        let ok = await h.handle(options)
        #expect(ok.status == 200 && ok.headers.contains { $0 == ("WebHook-Allowed-Origin", "myhub.webpubsub.azure.com") })
        options.headers["webhook-request-origin"] = "evil.example.com"
        let refused = await h.handle(options)
        #expect(refused.status == 403 && !refused.headers.contains { $0.0 == "WebHook-Allowed-Origin" })
    }

    @Test func connectPolicyDerivesUserGroupsAndRoles() async throws {
        var policy = ConnectPolicy()
        policy.userId = "{query.user}"
        policy.groups = ["room-{query.room}", "team-{claim.team}", "never-{query.missing}"]
        policy.roles = ["webpubsub.sendToGroup.room-{query.room}"]
        policy.subprotocol = "json.webpubsub.azure.v1"
        let (h, sink) = handler(connect: policy)
        let body = #"{"claims":{"team":["blue"]},"query":{"user":["bob"],"room":["42"]},"headers":{},"subprotocols":["json.webpubsub.azure.v1"]}"#
        let r = await h.handle(event("azure.webpubsub.sys.connect", name: "connect", user: nil, body: body))
        #expect(r.status == 200)
        let answer = try JSONValue.parse(r.body)
        #expect(answer["userId"] == .string("bob"))
        #expect(answer["groups"] == .array([.string("room-42"), .string("team-blue")]))
        #expect(answer["roles"] == .array([.string("webpubsub.sendToGroup.room-42")]))
        #expect(answer["subprotocol"] == .string("json.webpubsub.azure.v1"))
        // Later events of the connection carry its groups.
        _ = await h.handle(event("azure.webpubsub.sys.connected", name: "connected", user: "bob", body: "{}"))
        let envelope = try JSONValue.parse(try #require(sink.written.first).payload.readableBytesView)
        #expect(envelope["groups"] == .array([.string("room-42"), .string("team-blue")]))
    }

    /// `state:` sets the connection state from templates, base64-encoded so that a value from a
    /// claim or the query cannot break the header; later events carry it into the envelope.
    @Test func connectPolicySetsTheConnectionStateAndTheEnvelopeCarriesIt() async throws {
        var policy = ConnectPolicy()
        policy.state = "team {claim.team} room {query.room}"
        let (h, sink) = handler(connect: policy)
        let body = #"{"claims":{"team":["blue"]},"query":{"room":["42\r\nX-Evil: 1"]},"headers":{}}"#
        let r = await h.handle(event("azure.webpubsub.sys.connect", name: "connect", body: body))
        #expect(r.status == 200)
        let header = try #require(r.headers.first { $0.0 == "ce-connectionState" }?.1)
        #expect(Data(base64Encoded: header).map { String(decoding: $0, as: UTF8.self) } == "team blue room 42\r\nX-Evil: 1")
        var later = event("azure.webpubsub.user.chat", name: "chat", body: "{}")
        later.headers["ce-connectionstate"] = header
        _ = await h.handle(later)
        let envelope = try JSONValue.parse(try #require(sink.written.first).payload.readableBytesView)
        #expect(envelope["connectionstate"] == .string(header))
        // Without a state, the answer has no header and the envelope no field.
        let (plain, plainSink) = handler(connect: ConnectPolicy())
        let none = await plain.handle(event("azure.webpubsub.sys.connect", name: "connect", body: body))
        #expect(!none.headers.contains { $0.0 == "ce-connectionState" })
        _ = await plain.handle(event("azure.webpubsub.user.chat", name: "chat", body: "{}"))
        #expect(try JSONValue.parse(try #require(plainSink.written.first).payload.readableBytesView)["connectionstate"] == nil)
    }

    /// A value filled into a wildcard role is escaped: `?r=**` must not grant every group.
    @Test func valuesInWildcardRolesAreEscaped() async throws {
        var policy = ConnectPolicy()
        policy.roles = ["webpubsub.sendToGroups.room-{query.r}", "webpubsub.sendToGroup.room-{query.r}"]
        let (h, _) = handler(connect: policy)
        let body = #"{"claims":{},"query":{"r":["**"]},"headers":{}}"#
        let r = await h.handle(event("azure.webpubsub.sys.connect", name: "connect", body: body))
        let roles = try JSONValue.parse(r.body)["roles"]
        #expect(roles == .array([.string(#"webpubsub.sendToGroups.room-\*\*"#), .string("webpubsub.sendToGroup.room-**")]))
        let grants = RoleGrants(roles: [#"webpubsub.sendToGroups.room-\*\*"#])
        #expect(grants.allows(.sendToGroup, group: "room-**") && !grants.allows(.sendToGroup, group: "room-1"))
    }

    @Test func connectPolicyRejects() async {
        var required = ConnectPolicy()
        required.requireUser = true
        let (h, _) = handler(connect: required)
        let anonymous = await h.handle(event("azure.webpubsub.sys.connect", name: "connect", user: nil, body: #"{"claims":{},"query":{}}"#))
        #expect(anonymous.status == 401 && text(anonymous).contains("user id is required"))
        var closed = ConnectPolicy()
        closed.allow = false
        closed.rejectStatus = 403
        closed.rejectReason = "maintenance"
        let (h2, _) = handler(connect: closed)
        let refused = await h2.handle(event("azure.webpubsub.sys.connect", name: "connect", body: "{}"))
        #expect(refused.status == 403 && text(refused) == "maintenance")
    }
}

@Suite struct GroupMirrorTests {
    @Test func listenedMessagesGoToTheirGroupsRulesAsEnvelopes() async throws {
        let sink = MemorySink()
        let other = MemorySink()
        let mirror = GroupMessageMirror(
            rules: [
                EventRule(hub: "chat", events: ["group:room"], sink: sink), EventRule(hub: "chat", events: ["group:*"], sink: other),
                EventRule(hub: "ops", events: ["*"], sink: other), EventRule(hub: "chat", events: ["message"], sink: other),
            ], logger: quiet)
        let message = Message(
            payload: ByteBuffer(string: #"{"n":1.50}"#), dataType: .json, key: "alice",
            headers: ["hub": "chat", "group": "room", "event": "group:room", "userId": "alice", "wps-mirrored-from": "chat"],
            origin: Origin(source: "listener", position: "conn-9/17"))
        #expect(mirror.rules(for: message).count == 2)
        try await mirror.write(message)
        let record = try #require(sink.written.first)
        let envelope = try JSONValue.parse(record.payload.readableBytesView)
        #expect(envelope["type"] == .string("azure.webpubsub.group.message") && envelope["id"] == .string("listener/conn-9/17"))
        #expect(
            envelope["source"] == .string("/hubs/chat/groups/room") && envelope["group"] == .string("room") && envelope["userid"] == .string("alice"))
        #expect(envelope["data"]?.serialized == #"{"n":1.50}"#, "numbers as written")
        #expect(
            record.key == "alice" && record.headers["ce-type"] == "azure.webpubsub.group.message" && record.headers["wps-mirrored-from"] == "chat")
        #expect(other.written.count == 1)
    }

    @Test func aFailedSinkIsRetriedAloneUntilItTakesTheRecord() async throws {
        let good = MemorySink()
        let flaky = MemorySink()
        flaky.failing.store(true, ordering: .relaxed)
        let mirror = GroupMessageMirror(
            rules: [EventRule(hub: "chat", events: ["group:room"], sink: good), EventRule(hub: "chat", events: ["group:room"], sink: flaky)],
            logger: quiet)
        let message = Message(
            payload: ByteBuffer(string: "hi"), dataType: .text, key: "bob", headers: ["hub": "chat", "group": "room", "event": "group:room"],
            origin: Origin(source: "listener", position: "c/1"))
        let writing = Task { try await mirror.write(message) }
        try await Task.sleep(for: .milliseconds(300))
        flaky.failing.store(false, ordering: .relaxed)
        try await writing.value
        #expect(good.written.count == 1, "not written twice to the sink that took it")
        #expect(flaky.written.count == 1)
    }

    @Test func clientEventsNamedLikeGroupsAndTheListenersOwnEventsAreNotMirrored() async throws {
        let sink = MemorySink()
        var config = EventHandlerConfiguration()
        config.accessKeys = [key]
        config.rules = [EventRule(hub: "chat", events: ["*"], sink: sink)]
        config.listenerUsers = ["chat": ["wps-bridge"]]
        let h = EventHandler(configuration: config, logger: quiet)
        #expect(await h.handle(event("azure.webpubsub.user.group:room", name: "group:room", body: "{}")).status == 204)
        #expect(await h.handle(event("azure.webpubsub.sys.connected", name: "connected", user: "wps-bridge", body: "{}")).status == 204)
        #expect(sink.written.isEmpty)
        #expect(await h.handle(event("azure.webpubsub.sys.connected", name: "connected", user: "alice", body: "{}")).status == 204)
        #expect(sink.written.count == 1)
    }
}

@Suite struct RefusalLogTests {
    /// A stranger sending forged events cannot flood the log: 10 lines a minute.
    @Test func refusedRequestsAreLoggedAtMostTenTimesAMinute() async {
        let log = CapturedLog()
        var config = EventHandlerConfiguration()
        config.accessKeys = [key]
        config.rules = [EventRule(hub: "chat", events: ["*"], sink: MemorySink(), reply: .empty)]
        let h = EventHandler(configuration: config, logger: log.logger)
        for _ in 0..<500 {
            let r = await h.handle(event("azure.webpubsub.user.chat", name: "chat", signedWith: AccessKey("forged")))
            #expect(r.status == 401)
        }
        let warnings = log.all.filter { $0.contains("refused a request") }
        #expect(warnings.count == 10, "\(warnings.count) lines")
        #expect(h.stats.rejected.load(ordering: .relaxed) == 500)
    }
}
