import Foundation
import Testing
import WebPubSubProtocol

@testable import LocalHub

/// A connection's own bookkeeping, without sockets.
@Suite struct ClientConnectionTests {
    func connection(_ proto: ClientProtocol = .reliableJSON) -> ClientConnection {
        ClientConnection(
            id: "c1", hub: "chat", userId: "u", proto: proto, plainMode: .sendEvent, roles: [], subprotocolHeader: proto.rawValue,
            connectionState: nil)
    }

    /// A cancelled invocation's call still counts against the limit until it ends, and a reused
    /// id gets its own answer, not the earlier call's.
    @Test func cancelledInvocationsCountUntilTheirCallEndsAndIdsAreNotConfused() {
        let c = connection()
        guard case .started(let first) = c.startInvocation("a") else {
            Issue.record("not started")
            return
        }
        c.cancelInvocation("a")
        guard case .started(let second) = c.startInvocation("a") else {
            Issue.record("a cancelled id may be used again")
            return
        }
        #expect(c.finishInvocation("a", token: first) == false, "the first call's answer is not sent")
        #expect(c.finishInvocation("a", token: second) == true)
        var tokens: [UInt64] = []
        for i in 0..<ClientConnection.maxInvocations {
            if case .started(let t) = c.startInvocation("x\(i)") { tokens.append(t) }
            c.cancelInvocation("x\(i)")
        }
        #expect(tokens.count == ClientConnection.maxInvocations)
        #expect(c.startInvocation("more") == .tooMany, "cancelled calls still run")
        _ = c.finishInvocation("x0", token: tokens[0])
        guard case .started = c.startInvocation("more") else {
            Issue.record("a call that ended frees its place")
            return
        }
    }

    /// Messages past their TTL do not hold a session's room: a session away while many short-lived
    /// messages came is not ended as full once they expired.
    @Test func expiredMessagesDoNotFillTheReplay() async throws {
        let c = connection()
        var drains = DrainBatch()
        for _ in 0..<ClientConnection.maxUnackedMessages {
            _ = c.deliver(Outgoing(source: .server, dataType: .text, payload: Array("x".utf8), ttlSeconds: 1), drains: &drains)
        }
        try await Task.sleep(for: .milliseconds(1100))
        let result = c.deliver(Outgoing(source: .server, dataType: .text, payload: Array("y".utf8)), drains: &drains)
        #expect(result == .noSocket, "kept for the replay, not .bufferFull")
        #expect(c.replayBytes < 100)
    }
}
