import BridgeConfig
import NIOCore
import Testing
import WebPubSubProtocol

@testable import BridgeCore

func message(
    _ payload: String, dataType: DataType = .json, key: String? = nil, headers: [String: String] = [:],
    origin: Origin = Origin(source: "s")
) -> Message {
    Message(payload: ByteBuffer(string: payload), dataType: dataType, key: key, headers: headers, origin: origin)
}

@Suite struct TemplateTests {
    @Test func rendersEveryField() throws {
        let m = message(
            #"{"customer":{"id":42,"vip":true},"tags":["a","b"],"name":"x"}"#, key: "k1", headers: ["X-Tenant": "t9"],
            origin: Origin(source: "orders", topic: "t", channel: "c", stream: "st", partition: 3, position: "17"))
        let ctx = MessageContext(m)
        let cases: [(String, String)] = [
            ("room-{key}", "room-k1"),
            ("{header.X-Tenant}/{header.x-tenant}", "t9/t9"),
            ("orders-{json.customer.id}", "orders-42"),
            ("{json.customer.vip}", "true"),
            ("{json.tags}", #"["a","b"]"#),
            ("{json.tags.1}", "b"),
            ("{topic}-{partition}@{offset}", "t-3@17"),
            ("{source}:{channel}:{stream}", "orders:c:st"),
            ("{{literal}} {key}", "{literal} k1"),
            ("plain", "plain"),
        ]
        for (text, expected) in cases {
            #expect(try Template(text).render(ctx) == expected, "\(text)")
        }
    }

    @Test func unresolvableFieldsAreErrors() throws {
        let ctx = MessageContext(message("not json", dataType: .text))
        for text in ["{key}", "{json.a}", "{header.h}", "{topic}", "{partition}"] {
            #expect(throws: TemplateResolutionError.self, "\(text)") { try Template(text).render(ctx) }
        }
        let nullCtx = MessageContext(message(#"{"a":null}"#))
        #expect(throws: TemplateResolutionError.self) { try Template("{json.a}").render(nullCtx) }
    }

    @Test(arguments: ["{kee}", "{json.}", "{header.}", "open {", "close }", "{json..a}"])
    func syntaxErrors(text: String) {
        #expect(throws: TemplateSyntaxError.self, "\(text)") { try Template(text) }
    }

    @Test func escapesFilterValues() throws {
        let target = TargetSpec(hub: Template(literal: "h"), recipient: .all, filter: try Template("userId ne '{key}'"))
        let resolved = try target.resolve(MessageContext(message("{}", key: "o'brien")))
        #expect(resolved.filter == "userId ne 'o''brien'")
    }

    /// `metadata: {trace: "{header.traceparent}"}` on a target: rendered per message and checked as
    /// the service checks it; a value it would refuse fails the message (dead letter) with the reason.
    @Test func metadataIsRenderedAndChecked() throws {
        let target = TargetSpec(
            hub: Template(literal: "h"), recipient: .all,
            metadata: [("trace", try Template("{header.traceparent}")), ("src", Template(literal: "kafka"))])
        let resolved = try target.resolve(MessageContext(message("{}", headers: ["traceparent": "00-abc-01"])))
        #expect(resolved.metadata == [MetadataEntry(key: "trace", value: "00-abc-01"), MetadataEntry(key: "src", value: "kafka")])
        #expect(throws: TargetResolutionError.self) { try target.resolve(MessageContext(message("{}", headers: ["traceparent": "caf\u{E9}"]))) }
        let long = String(repeating: "x", count: 1025)
        #expect(throws: TargetResolutionError.self) { try target.resolve(MessageContext(message("{}", headers: ["traceparent": long]))) }
    }

    @Test func resolvedNamesAreChecked() throws {
        let badHub = TargetSpec(hub: try Template("{key}"), recipient: .all)
        #expect(throws: TargetResolutionError.self) { try badHub.resolve(MessageContext(message("{}", key: "1abc"))) }
        let emptyGroup = TargetSpec(hub: Template(literal: "h"), recipient: .group(try Template("{json.g}")))
        #expect(throws: TargetResolutionError.self) { try emptyGroup.resolve(MessageContext(message(#"{"g":"  "}"#))) }
    }

    /// `{json.userId}` of `..` would make `users/../:send` a send to the whole hub once a server
    /// normalises the path: such names fail the message (dead letter), with the reason.
    @Test(arguments: [("..", #"{"n":".."}"#), (".", #"{"n":"."}"#), ("", #"{"n":""}"#), (" \t", #"{"n":" \t"}"#)])
    func dotAndEmptyNamesFailTheMessage(name: String, body: String) throws {
        for recipient: TargetSpec.RecipientSpec in [
            .user(try Template("{json.n}")), .group(try Template("{json.n}")), .connection(try Template("{json.n}")),
        ] {
            let target = TargetSpec(hub: Template(literal: "h"), recipient: recipient)
            let error = #expect(throws: TargetResolutionError.self) { try target.resolve(MessageContext(message(body))) }
            #expect(
                error?.message.contains(name.isEmpty ? "is empty" : name == "." || name == ".." ? "is not allowed" : "white space") == true,
                "\(String(describing: error))")
        }
        // A name that only looks like one is fine: the REST client encodes it.
        let fine = TargetSpec(hub: Template(literal: "h"), recipient: .user(try Template("{json.n}")))
        #expect(try fine.resolve(MessageContext(message(#"{"n":"...:send/x?y"}"#))).recipient == .user("...:send/x?y"))
    }
}

@Suite struct RouteConditionTests {
    @Test func matchesOnFields() throws {
        let c = try RouteCondition("json.type eq 'order' and json.amount gt 10 and header.source ne 'bot' and 'vip' in json.tags")
        #expect(c.matches(MessageContext(message(#"{"type":"order","amount":12.5,"tags":["vip"]}"#, headers: ["source": "web"]))))
        #expect(!c.matches(MessageContext(message(#"{"type":"order","amount":5,"tags":["vip"]}"#))))
        #expect(!c.matches(MessageContext(message(#"{"type":"order","amount":50,"tags":[]}"#))))
        #expect(!c.matches(MessageContext(message("garbage", dataType: .text))))
    }

    @Test func keyAndPartition() throws {
        let c = try RouteCondition("key eq 'a' or partition eq 2")
        #expect(c.matches(MessageContext(message("{}", key: "a"))))
        #expect(c.matches(MessageContext(message("{}", origin: Origin(source: "s", partition: 2)))))
        #expect(!c.matches(MessageContext(message("{}", key: "b"))))
    }

    @Test func unknownFieldIsAnError() {
        #expect(throws: TemplateSyntaxError.self) { try RouteCondition("colour eq 'red'") }
        #expect(throws: TemplateSyntaxError.self) { try RouteCondition("json.a eq") }
    }
}

@Suite struct RetryPolicyTests {
    @Test func exponentialCeilingCapped() {
        let p = RetryPolicy(maxAttempts: 10, initialBackoff: .milliseconds(100), maxBackoff: .seconds(1))
        #expect(p.backoffCeiling(attempt: 1) == .milliseconds(100))
        #expect(p.backoffCeiling(attempt: 2) == .milliseconds(200))
        #expect(p.backoffCeiling(attempt: 4) == .milliseconds(800))
        #expect(p.backoffCeiling(attempt: 5) == .seconds(1))
        #expect(p.backoffCeiling(attempt: 60) == .seconds(1))
    }

    @Test func fullJitterStaysUnderTheCeiling() {
        let p = RetryPolicy(maxAttempts: 10, initialBackoff: .milliseconds(100), maxBackoff: .seconds(1))
        for attempt in 1...8 {
            for _ in 0..<50 {
                let d = p.delay(attempt: attempt, retryAfter: nil)
                #expect(d >= .zero && d <= p.backoffCeiling(attempt: attempt))
            }
        }
        #expect(p.delay(attempt: 3, retryAfter: nil) { $0 } == .milliseconds(400))
        #expect(p.delay(attempt: 3, retryAfter: nil) { _ in 0 } == .zero)
    }

    @Test func retryAfterWins() {
        let p = RetryPolicy(maxAttempts: 10, initialBackoff: .milliseconds(100), maxBackoff: .seconds(1))
        #expect(p.delay(attempt: 1, retryAfter: .seconds(2)) == .seconds(2))
        #expect(p.delay(attempt: 1, retryAfter: .seconds(3600)) == RetryPolicy.maxRetryAfter)
    }

    /// A 429's retry-after of a millisecond does not make the retry sooner than the backoff.
    @Test func aThrottledRetryWaitsAtLeastTheBackoff() {
        let p = RetryPolicy(maxAttempts: 10, initialBackoff: .milliseconds(100), maxBackoff: .seconds(1))
        #expect(p.delay(attempt: 3, retryAfter: .milliseconds(1), throttled: true) { $0 } == .milliseconds(400))
        #expect(p.delay(attempt: 3, retryAfter: .seconds(2), throttled: true) { $0 } == .seconds(2))
        #expect(p.delay(attempt: 3, retryAfter: .milliseconds(1)) { $0 } == .milliseconds(1))
    }

    @Test func durations() {
        #expect(parseDuration("250ms") == .milliseconds(250))
        #expect(parseDuration("1.5s") == .milliseconds(1500))
        #expect(parseDuration("2m") == .seconds(120))
        #expect(parseDuration("1h") == .seconds(3600))
        #expect(parseDuration("3") == .seconds(3))
        #expect(parseDuration("fast") == nil)
        #expect(parseDuration("-1s") == nil)
    }
}
