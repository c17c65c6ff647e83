package import BridgeConfig
package import BridgeCore
import BridgeJSON
import BridgeObservability
import CoreMetrics
import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket
import Synchronization
import WebPubSub
import WebPubSubProtocol

struct ListenerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `type: webpubsub` sources.
package struct GroupListenerSourceFactory: SourceFactory {
    package init() {}
    package var isAtLeastOnce: Bool { true }
    package var typeName: String { "webpubsub" }
    package var summary: String { "messages clients send to groups of a hub, as a listening client (hub, groups, userId)" }
    package var originFields: Set<String> { [] }

    package func makeSource(name: String, settings m: ConfigMapping, context: AdapterContext) -> (any SourceAdapter)? {
        m.checkKeys(
            [
                "hub", "groups", "userId", "includeServerMessages", "connectionString", "connectionStringFile", "recoveryTimeout", "connectTimeout",
                "bufferSize",
            ],
            what: "a webpubsub source")
        let hub = m.nonEmptyString("hub", required: true)
        if let hub, let problem = WebPubSubNames.hubProblem(hub) { m.value("hub")?.report(problem) }
        let groups = m.stringList("groups") ?? []
        if !m.has("groups") {
            m.report("missing required key 'groups': the groups to listen to")
        } else if groups.isEmpty {
            m.value("groups")?.report("at least one group is needed")
        }
        for group in groups {
            if let problem = WebPubSubNames.groupProblem(group) { m.value("groups")?.report(problem) }
        }
        if Set(groups).count != groups.count { m.value("groups")?.report("a group is listed twice") }
        guard let hub, !groups.isEmpty else { return nil }
        var settings = GroupListenerSource.Settings(hub: hub, groups: groups)
        settings.userId = m.nonEmptyString("userId") ?? settings.userId
        settings.includeServerMessages = m.bool("includeServerMessages") ?? false
        for (key, value) in [("recoveryTimeout", m.duration("recoveryTimeout")), ("connectTimeout", m.duration("connectTimeout"))] {
            guard let value else { continue }
            if value < .seconds(1) { m.value(key)?.report("\(key) must be at least 1s") }
            if key == "recoveryTimeout" { settings.recoveryTimeout = value } else { settings.connectTimeout = value }
        }
        settings.bufferSize = m.int("bufferSize", range: 1...1_000_000) ?? settings.bufferSize
        if let text = m.secret("connectionString") {
            do {
                settings.connectionString = try ConnectionString(parsing: text)
            } catch {
                (m.value("connectionString") ?? m.value("connectionStringFile"))?.report("invalid connection string: \(error.message)")
            }
        }
        return GroupListenerSource(name: name, settings: settings, logger: context.logger)
    }
}
