package import BridgeCore
package import BridgeJSON
import Foundation
package import WebPubSub

/// How the bridge answers `connect` events: the policy of `eventHandler.connect`.
package struct ConnectPolicy: Sendable {
    /// false: every connection is refused with `rejectStatus` and `rejectReason`.
    package var allow = true
    package var rejectStatus = 401
    package var rejectReason = "connections are not accepted"
    /// Refuse (401) a connection that has no user id after `userId` was applied.
    package var requireUser = false
    /// `{claim.NAME}`, `{query.NAME}`, `{header.NAME}`, `{userId}`, `{connectionId}`: the user id
    /// to give the connection (overrides the token's `sub` when it renders non-empty).
    package var userId: String?
    /// Groups to join and roles to grant, templated the same way; one that cannot be filled is left out.
    package var groups: [String] = []
    package var roles: [String] = []
    /// Chosen when the client offered it.
    package var subprotocol: String?
    /// The connection state (`ce-connectionState`) the service keeps for the connection and
    /// sends with each of its later events: this template's text, base64-encoded (UTF-8).
    package var state: String?

    package init() {}
}

/// One `events:` rule: which events of which hub go to which sink, and what a user event is
/// answered with.
package struct EventRule: Sendable {
    /// What a user event (or an `invoke`) is answered with, once its sink wrote it. The service
    /// sends a 200's body back to the client: as a message for an `event`, as the
    /// `invokeResponse` for an `invoke`.
    package enum Reply: Sendable, Equatable {
        /// 204, nothing goes back to the client.
        case empty
        /// 200 with `{"ack": "<event id>", "event": "<name>"}`.
        case ack
        /// 200 with this text (`text/plain`), its fields (``ReplyTemplate``) filled.
        case text(String)
        /// 200 with this JSON, the fields of every string in it filled.
        case json(JSONValue)
    }

    package var hub: String
    /// User event names, `connected`, `disconnected`, or `*` for all of them.
    package var events: Set<String>
    package var sink: any SinkAdapter
    package var reply: Reply

    package init(hub: String, events: Set<String>, sink: any SinkAdapter, reply: Reply = .empty) {
        self.hub = hub
        self.events = events
        self.sink = sink
        self.reply = reply
    }

    /// `event` is a user event name, `connected`, `disconnected`, or `group:NAME` for a message a
    /// `type: webpubsub` listener heard in group NAME (matched by `group:NAME`, `group:*` and `*`).
    package func matches(hub: String, event: String) -> Bool {
        guard self.hub == "*" || self.hub.caseInsensitiveCompare(hub) == .orderedSame else { return false }
        return events.contains("*") || events.contains(event) || (event.hasPrefix("group:") && events.contains("group:*"))
    }

    /// The groups whose listened messages this rule takes (`*` for all), empty when none.
    package var groups: Set<String> {
        if events.contains("*") { return ["*"] }
        return Set(events.filter { $0.hasPrefix("group:") }.map { String($0.dropFirst(6)) })
    }

    /// Whether the rule names events the hub sends to the event handler (not only group messages).
    package var takesHandlerEvents: Bool { events.contains { !$0.hasPrefix("group:") } }
}

/// `eventHandler:` and `events:` of the config: everything the upstream endpoint needs.
package struct EventHandlerConfiguration: Sendable {
    /// The handler answers at `{path}/{hub}`.
    package var path = "/eventhandler"
    /// `WebHook-Request-Origin` values allowed by the abuse-protection handshake; `*` for any.
    package var allowedOrigins: [String] = []
    /// Keys whose `ce-signature` is accepted (primary and secondary).
    package var accessKeys: [AccessKey] = []
    /// An optional shared secret, from `?code=` or the `X-WPS-Auth-Token` header.
    package var authToken: String?
    /// Hubs whose `connect` events the bridge answers with `connect`; nil: connect events are
    /// answered with the defaults (allow).
    package var connect: ConnectPolicy?
    package var rules: [EventRule] = []
    /// User ids of the bridge's own group listeners, by hub (lower case): their connection
    /// events are not mirrored.
    package var listenerUsers: [String: Set<String>] = [:]

    package init() {}

    /// Whether any rule or the connect policy concerns `hub`.
    func knows(hub: String) -> Bool {
        connect != nil || rules.contains { $0.hub == "*" || $0.hub.caseInsensitiveCompare(hub) == .orderedSame }
    }
}
