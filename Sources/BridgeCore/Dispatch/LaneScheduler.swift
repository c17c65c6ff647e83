import NIOCore
import Synchronization

/// Hands jobs to a fixed pool of workers so that jobs of one lane run one at a time, in order,
/// while different lanes run in parallel; admits new jobs only while fewer than `capacity` are
/// queued or running, which is the back-pressure sources feel.
final class LaneScheduler<Job: Sendable>: Sendable {
    private struct Lane {
        var queue = CircularBuffer<Job>()
        var busy = false
    }

    private struct State {
        var lanes: [String: Lane] = [:]
        var ready = CircularBuffer<String>()
        var idleWorkers = CircularBuffer<CheckedContinuation<(String, Job)?, Never>>()
        var capacityWaiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        var idleWaiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var inFlight = 0
        var nextWaiterID = 0
        var closed = false
    }

    private let state = Mutex(State())
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// Jobs queued or running.
    var inFlight: Int { state.withLock { $0.inFlight } }

    /// Queues `jobs`, waiting first until there is room. Checking for room and taking it is
    /// one step, so that waiters woken together cannot overfill the queue.
    /// - Throws: `CancellationError` when the calling task is cancelled while it waits, or the
    ///   scheduler is closed.
    func enqueue(_ jobs: [(lane: String, job: Job)]) async throws {
        guard !jobs.isEmpty else { return }
        while true {
            let outcome: (handoffs: [(CheckedContinuation<(String, Job)?, Never>, (String, Job))], waiter: Int?) =
                try state.withLock { s throws(CancellationError) in
                    if s.closed { throw CancellationError() }
                    guard s.inFlight < capacity else {
                        s.nextWaiterID += 1
                        return ([], s.nextWaiterID)
                    }
                    s.inFlight += jobs.count
                    for (lane, job) in jobs {
                        s.lanes[lane, default: Lane()].queue.append(job)
                        if !s.lanes[lane]!.busy, s.lanes[lane]!.queue.count == 1 {
                            s.ready.append(lane)
                        }
                    }
                    var handoffs: [(CheckedContinuation<(String, Job)?, Never>, (String, Job))] = []
                    while !s.idleWorkers.isEmpty, let handoff = Self.takeReady(&s) {
                        handoffs.append((s.idleWorkers.removeFirst(), handoff))
                    }
                    return (handoffs, nil)
                }
            guard let id = outcome.waiter else {
                for (worker, job) in outcome.handoffs { worker.resume(returning: job) }
                return
            }
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                    let resumeNow: (any Error)?? = state.withLock { s in
                        if Task.isCancelled || s.closed { return .some(CancellationError()) }
                        if s.inFlight < capacity { return .some(nil) }
                        s.capacityWaiters[id] = c
                        return nil
                    }
                    if let resumeNow {
                        if let error = resumeNow { c.resume(throwing: error) } else { c.resume() }
                    }
                }
            } onCancel: {
                let waiter = state.withLock { $0.capacityWaiters.removeValue(forKey: id) }
                waiter?.resume(throwing: CancellationError())
            }
        }
    }

    private static func takeReady(_ s: inout State) -> (String, Job)? {
        while let lane = s.ready.popFirst() {
            // Changed in place: a copy of the lane taken out of the dictionary would share its
            // queue's storage, and the pop would then copy the whole queue (every job of the lane).
            guard let index = s.lanes.index(forKey: lane), !s.lanes.values[index].busy,
                let job = s.lanes.values[index].queue.popFirst()
            else { continue }
            s.lanes.values[index].busy = true
            return (lane, job)
        }
        return nil
    }

    /// The next job for a worker; nil once the scheduler is closed.
    func next() async -> (lane: String, job: Job)? {
        let taken: (String, Job)?? = state.withLock { s in
            if s.closed { return .some(nil) }
            if let job = Self.takeReady(&s) { return .some(job) }
            return nil
        }
        if let taken { return taken.map { ($0.0, $0.1) } }
        let job = await withCheckedContinuation { (c: CheckedContinuation<(String, Job)?, Never>) in
            let immediate: (String, Job)?? = state.withLock { s in
                if s.closed { return .some(nil) }
                if let job = Self.takeReady(&s) { return .some(job) }
                s.idleWorkers.append(c)
                return nil
            }
            if let immediate { c.resume(returning: immediate) }
        }
        return job.map { ($0.0, $0.1) }
    }

    /// Marks the running job of `lane` done, freeing its lane and a place in the queue.
    func complete(lane: String) {
        var wakeWorker: (CheckedContinuation<(String, Job)?, Never>, (String, Job))?
        var waiters: [CheckedContinuation<Void, any Error>] = []
        var idle: [CheckedContinuation<Bool, Never>] = []
        state.withLock { s in
            s.inFlight -= 1
            if let index = s.lanes.index(forKey: lane) {
                if s.lanes.values[index].queue.isEmpty {
                    s.lanes.remove(at: index)
                } else {
                    s.lanes.values[index].busy = false
                    s.ready.append(lane)
                    if !s.idleWorkers.isEmpty, let job = Self.takeReady(&s) {
                        wakeWorker = (s.idleWorkers.removeFirst(), job)
                    }
                }
            }
            if s.inFlight < capacity, !s.capacityWaiters.isEmpty {
                waiters = Array(s.capacityWaiters.values)
                s.capacityWaiters.removeAll()
            }
            if s.inFlight == 0 {
                idle = Array(s.idleWaiters.values)
                s.idleWaiters.removeAll()
            }
        }
        if let (worker, job) = wakeWorker { worker.resume(returning: job) }
        for w in waiters { w.resume() }
        for w in idle { w.resume(returning: true) }
    }

    /// Returns true when nothing is queued or running, false if the task was cancelled first.
    func waitUntilIdle() async -> Bool {
        let id = state.withLock { s in
            s.nextWaiterID += 1
            return s.nextWaiterID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let now: Bool? = state.withLock { s in
                    if s.inFlight == 0 { return true }
                    if Task.isCancelled { return false }
                    s.idleWaiters[id] = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.idleWaiters.removeValue(forKey: id) }
            waiter?.resume(returning: false)
        }
    }

    /// Stops handing out jobs: idle workers get nil. Returns the jobs that were still queued
    /// (not running), so that their deliveries can be settled.
    func close() -> [Job] {
        var workers: [CheckedContinuation<(String, Job)?, Never>] = []
        var idle: [CheckedContinuation<Bool, Never>] = []
        var blocked: [CheckedContinuation<Void, any Error>] = []
        let remaining: [Job] = state.withLock { s in
            s.closed = true
            workers = Array(s.idleWorkers)
            s.idleWorkers.removeAll()
            blocked = Array(s.capacityWaiters.values)
            s.capacityWaiters.removeAll()
            var jobs: [Job] = []
            for (key, var lane) in s.lanes {
                jobs.append(contentsOf: lane.queue)
                s.inFlight -= lane.queue.count
                lane.queue.removeAll()
                s.lanes[key] = lane.busy ? lane : nil
            }
            s.ready.removeAll()
            if s.inFlight == 0 {
                idle = Array(s.idleWaiters.values)
                s.idleWaiters.removeAll()
            }
            return jobs
        }
        for w in workers { w.resume(returning: nil) }
        for w in idle { w.resume(returning: true) }
        for w in blocked { w.resume(throwing: CancellationError()) }
        return remaining
    }
}
