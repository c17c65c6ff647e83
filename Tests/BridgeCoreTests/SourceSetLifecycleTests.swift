import Testing

@testable import BridgeCore

/// The source set's lifecycle, transition by transition.
@Suite struct SourceSetLifecycleTests {
    typealias Lifecycle = SourceSet.Lifecycle

    @Test func sourcesStartUntilClosedOrCancelled() {
        var l = Lifecycle()
        #expect(l.mayStart && !l.isStopping)
        l.markStarted()
        #expect(l.phase == .running && l.mayStart)
        _ = l.close()
        #expect(!l.mayStart && l.isStopping)
        var c = Lifecycle()
        c.cancel()
        #expect(!c.mayStart && c.isStopping)
        c.markStarted()
        #expect(c.phase == .cancelled, "a cancelled set does not come back")
    }

    @Test func reloadsHoldOnlyARunningSet() {
        var l = Lifecycle()
        let r1 = l.hold()
        #expect(!r1, "before the first sources run")
        l.markStarted()
        let r2 = l.hold()
        let r3 = l.hold()
        #expect(r2 && r3 && l.holds == 2)
        let r4 = l.release()
        #expect(!r4)
        let r5 = l.release()
        #expect(r5 && l.holds == 0)
        l.cancel()
        let r6 = l.hold()
        #expect(!r6, "once stopping")
        var closed = Lifecycle()
        closed.markStarted()
        _ = closed.close()
        let r7 = closed.hold()
        #expect(!r7)
    }

    @Test func closeWaitsForTheReloadThatHoldsTheSet() {
        var l = Lifecycle()
        l.markStarted()
        let r8 = l.hold()
        #expect(r8)
        let r9 = l.close()
        #expect(!r9, "a reload holds the set: close waits")
        let r10 = l.release()
        #expect(r10, "the reload let go: close goes on")
        var free = Lifecycle()
        let r11 = free.close()
        #expect(r11)
    }

    @Test func aHoldKeepsIntakeOpenUnlessCancelled() {
        var l = Lifecycle()
        l.markStarted()
        #expect(l.allEnded(anyRunning: false))
        #expect(!l.allEnded(anyRunning: true))
        let r12 = l.hold()
        #expect(r12)
        #expect(!l.allEnded(anyRunning: false), "a reload is swapping sources")
        l.cancel()
        #expect(l.allEnded(anyRunning: false), "stopping: the hold does not keep the drain waiting")
    }
}
