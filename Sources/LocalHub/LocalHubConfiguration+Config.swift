package import BridgeConfig
import Foundation
import HTTPGuards
package import WebPubSub
import WebPubSubProtocol

/// The embedded hub reads its own settings (`webpubsub.embedded` of a bridge config, and
/// `wps-bridge hub --config`), and checks them in one place, ``problems()``, whether they came
/// from a file or from the `hub` command's flags.
extension LocalHubConfiguration {
    /// A setting that can be wrong, by its key under `webpubsub.embedded`.
    package enum Setting: String, Sendable, CaseIterable {
        case accessKey, port, rateLimit, reconnectGrace, upstreamRetries, trustedIssuers, signingKeyRefresh, maxGroupsPerConnection
        case maxReplayBytes, hubs
    }

    /// One thing wrong with the settings.
    package struct Problem: Sendable, Equatable, CustomStringConvertible {
        package let setting: Setting
        package let message: String
        package var description: String { "\(setting.rawValue): \(message)" }
    }

    /// The keys of `webpubsub.embedded`.
    package static let keys =
        [
            "host", "port", "accessKey", "accessKeyFile", "secondaryAccessKey", "rateLimit", "allowAnonymous", "negotiate", "reconnectGrace",
            "upstreamRetries", "trustedIssuers", "signingKeyRefresh", "maxGroupsPerConnection", "maxReplayBytes", "hubs",
        ] + ConnectionLimits.keys

    /// A random access key (33 random bytes, base64), for a hub given none.
    package static func randomAccessKey() -> AccessKey {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<33).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return AccessKey(Data(bytes).base64EncodedString())
    }

    /// Reads `webpubsub.embedded`; every problem goes to the mapping's report, with its line.
    package init(reading m: ConfigMapping) {
        m.checkKeys(Self.keys, what: "webpubsub.embedded")
        self.init(accessKeys: [m.secret("accessKey").map(AccessKey.init) ?? Self.randomAccessKey()])
        if let secondary = m.nonEmptyString("secondaryAccessKey") { accessKeys.append(AccessKey(secondary)) }
        host = m.nonEmptyString("host") ?? host
        port = m.int("port") ?? port
        rateLimit = m.int("rateLimit")
        allowAnonymous = m.bool("allowAnonymous") ?? false
        negotiate = m.bool("negotiate") ?? false
        reconnectGrace = m.duration("reconnectGrace") ?? reconnectGrace
        upstreamRetries = m.int("upstreamRetries") ?? upstreamRetries
        trustedIssuers = m.stringList("trustedIssuers") ?? []
        signingKeyRefresh = m.duration("signingKeyRefresh") ?? signingKeyRefresh
        limits = ConnectionLimits.read(m)
        maxGroupsPerConnection = m.int("maxGroupsPerConnection") ?? maxGroupsPerConnection
        maxReplayBytes = m.int("maxReplayBytes") ?? maxReplayBytes
        if let hubs = m.mapping("hubs") {
            for name in hubs.keys {
                guard let hub = hubs.mapping(name) else { continue }
                hub.checkKeys(["eventHandlers"], what: "a hub")
                var handlers: [EventHandlerSettings] = []
                for item in hub.list("eventHandlers") ?? [] {
                    guard let h = item.mapping() else { continue }
                    h.checkKeys(["url", "userEvents", "systemEvents"], what: "an event handler")
                    guard let url = h.nonEmptyString("url", required: true) else { continue }
                    let system = h.stringList("systemEvents") ?? ["connect", "connected", "disconnected"]
                    handlers.append(
                        EventHandlerSettings(urlTemplate: url, userEventPattern: h.string("userEvents") ?? "*", systemEvents: Set(system)))
                }
                eventHandlers[name, default: []] += handlers
            }
        }
        for problem in problems() {
            // At the value when the file has it, else at the mapping.
            if let value = m.value(problem.setting.rawValue) { value.report(problem.message) } else { m.report(problem.message) }
        }
        // Hub names are case-insensitive: checked as written, kept lower-cased.
        // Names that differ in case only are one hub: their handlers in the order of the names.
        var byHub: [String: [EventHandlerSettings]] = [:]
        for name in eventHandlers.keys.sorted() { byHub[name.lowercased(), default: []] += eventHandlers[name] ?? [] }
        eventHandlers = byHub
    }

    /// What is wrong with these settings; empty when the hub can run with them.
    package func problems() -> [Problem] {
        var found: [Problem] = []
        func check(_ ok: Bool, _ setting: Setting, _ message: @autoclosure () -> String) {
            if !ok { found.append(Problem(setting: setting, message: message())) }
        }
        func isURL(_ text: String) -> Bool { text.hasPrefix("http://") || text.hasPrefix("https://") }
        check(accessKeys.allSatisfy { !$0.value.isEmpty }, .accessKey, "an access key may not be empty")
        check((0...65535).contains(port), .port, "\(port) is out of range 0...65535")
        if let rateLimit { check((1...1_000_000).contains(rateLimit), .rateLimit, "\(rateLimit) is out of range 1...1000000") }
        check(reconnectGrace > .zero, .reconnectGrace, "reconnectGrace must be more than 0")
        check((0...100).contains(upstreamRetries), .upstreamRetries, "\(upstreamRetries) is out of range 0...100")
        for issuer in trustedIssuers {
            check(isURL(issuer), .trustedIssuers, "'\(issuer)' is not an issuer URL (http:// or https://)")
        }
        check(signingKeyRefresh > .zero, .signingKeyRefresh, "signingKeyRefresh must be more than 0")
        check((1...100_000).contains(maxGroupsPerConnection), .maxGroupsPerConnection, "\(maxGroupsPerConnection) is out of range 1...100000")
        check(
            (1024...(64 * 1024 * 1024 * 1024)).contains(maxReplayBytes), .maxReplayBytes,
            "\(maxReplayBytes) is out of range 1024...\(64 * 1024 * 1024 * 1024)")
        for (hub, handlers) in eventHandlers.sorted(by: { $0.key < $1.key }) {
            if let problem = WebPubSubNames.hubProblem(hub) { found.append(Problem(setting: .hubs, message: problem)) }
            for handler in handlers {
                check(
                    isURL(handler.urlTemplate), .hubs,
                    "hub '\(hub)': the event handler URL '\(handler.urlTemplate)' must start with http:// or https://")
                for event in handler.systemEvents.sorted() where !["connect", "connected", "disconnected"].contains(event) {
                    found.append(
                        Problem(setting: .hubs, message: "hub '\(hub)': unknown system event '\(event)'; known: connect, connected, disconnected"))
                }
            }
        }
        return found
    }
}
