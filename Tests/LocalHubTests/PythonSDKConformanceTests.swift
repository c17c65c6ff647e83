import BridgeTestSupport
import LocalHub
import Testing

/// The official `azure-messaging-webpubsubservice` and `azure-messaging-webpubsubclient`
/// against the hub: every data-plane operation, both JSON subprotocols, acks, permissions,
/// and reliable reconnection (`Tests/python/hub_conformance.py`).
@Suite struct PythonSDKConformanceTests {
    @Test func officialSDKsWorkAgainstTheHub() async throws {
        let python = try TestEnvironment.python()
        try await withHub { hub, _ in
            let result = try await runProcess(
                python, [TestEnvironment.packageRoot + "/Tests/python/hub_conformance.py", try await hub.connectionString()], timeout: 300)
            let report = result.stdout.split(separator: "\n").filter { $0.hasPrefix("PASS") || $0.hasPrefix("FAIL") }
            #expect(report.count == 8, "\(result.stdout)\n\(result.stderr)")
            #expect(
                result.status == 0,
                "\(result.stdout)\n\(result.stderr.split(separator: "\n").filter { !$0.contains("Warning") }.suffix(30).joined(separator: "\n"))")
        }
    }
}
