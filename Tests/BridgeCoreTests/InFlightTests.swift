import Testing

@testable import BridgeCore

/// Waiting for work in flight to settle is woken by the last piece of work, not polled.
@Suite struct InFlightTests {
    @Test func aWaiterWakesWhenTheLastWorkLeaves() async {
        let work = InFlight()
        work.enter(2)
        let waiter = Task { await work.drained(within: .seconds(30)) }
        try? await Task.sleep(for: .milliseconds(20))
        work.leave()
        #expect(work.count == 1)
        work.leave()
        #expect(await waiter.value)
    }

    @Test func nothingInFlightReturnsAtOnce() async {
        #expect(await InFlight().drained(within: .seconds(30)))
    }

    @Test func aDeadlineEndsTheWait() async {
        let work = InFlight()
        work.enter()
        #expect(await work.drained(within: .milliseconds(50)) == false)
        work.leave()
    }

    @Test func cancellingTheWaiterEndsIt() async {
        let work = InFlight()
        work.enter()
        let waiter = Task { await work.drained() }
        try? await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        await waiter.value
        work.leave()
    }
}
