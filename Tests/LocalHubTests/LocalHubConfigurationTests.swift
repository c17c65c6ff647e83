import Testing
import WebPubSub

@testable import LocalHub

/// One set of rules for the hub's settings, whoever sets them (config file or flags).
@Suite struct LocalHubConfigurationTests {
    func settings(_ change: (inout LocalHubConfiguration) -> Void = { _ in }) -> LocalHubConfiguration {
        var s = LocalHubConfiguration(accessKeys: [AccessKey("k")])
        change(&s)
        return s
    }

    @Test func theDefaultsHaveNoProblem() {
        #expect(settings().problems().isEmpty)
        #expect(!LocalHubConfiguration.randomAccessKey().value.isEmpty)
    }

    @Test func eachBadSettingIsNamed() {
        let cases: [(LocalHubConfiguration, LocalHubConfiguration.Setting)] = [
            (settings { $0.accessKeys = [AccessKey("")] }, .accessKey),
            (settings { $0.port = -1 }, .port),
            (settings { $0.rateLimit = 0 }, .rateLimit),
            (settings { $0.reconnectGrace = .zero }, .reconnectGrace),
            (settings { $0.upstreamRetries = 101 }, .upstreamRetries),
            (settings { $0.trustedIssuers = ["login.example"] }, .trustedIssuers),
            (settings { $0.signingKeyRefresh = .zero }, .signingKeyRefresh),
            (settings { $0.maxGroupsPerConnection = 0 }, .maxGroupsPerConnection),
            (settings { $0.maxReplayBytes = 10 }, .maxReplayBytes),
            (settings { $0.eventHandlers = ["9chat": [EventHandlerSettings(urlTemplate: "http://x")]] }, .hubs),
            (settings { $0.eventHandlers = ["chat": [EventHandlerSettings(urlTemplate: "ftp://x")]] }, .hubs),
        ]
        for (s, setting) in cases {
            #expect(s.problems().map(\.setting) == [setting], "\(s.problems())")
        }
    }
}
