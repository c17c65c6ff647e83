import NIOCore
import Synchronization

/// What makes jobs of a batched lane share one send: the resolved target and the data type.
struct BatchKey: Hashable, Sendable {
    let target: ResolvedTarget
    let dataType: DataType
}

/// Where a job of a `batch:` route goes in its lane's batcher.
struct BatchPlacement: Sendable {
    let limits: BatchSettings
    /// Nil: the job cannot share a send (its target did not resolve, or it is binary) and goes alone.
    let key: BatchKey?
    /// What it adds to the batch's payload.
    let bytes: Int
    let conflationKey: String?
}

/// Hands jobs to a fixed pool of workers so that jobs of one lane run one at a time, in order,
/// while different lanes run in parallel; admits new jobs only while fewer than `capacity` are
/// queued or running, which is the back-pressure sources feel.
///
/// A lane of a `batch:` route holds a ``Batcher`` instead of a queue: a worker takes a whole
/// batch, once it is due (full, or its first job waited `maxDelay`). A lane whose batch waits
/// has a timer that lists it when it is due; nothing polls.
final class LaneScheduler<Job: Sendable>: Sendable {
    /// What a worker takes: one job, or a batch of a batched lane.
    enum Work: Sendable {
        case one(Job)
        case batch(Batcher<Job, BatchKey>.Batch)

        /// The jobs it settles, superseded ones included.
        var count: Int {
            switch self {
            case .one: 1
            case .batch(let b): b.items.count + b.superseded.count
            }
        }
    }

    /// One job to queue, with its place in a batch when its route batches.
    struct Entry: Sendable {
        let lane: String
        let job: Job
        var batch: BatchPlacement?
    }

    private struct Lane {
        var queue = CircularBuffer<Job>()
        var batcher: Batcher<Job, BatchKey>?
        var busy = false
        /// Listed in `ready` (tracked for batched lanes; a plain lane is listed with its first job).
        var listed = false
        /// When the armed timer of a batched lane fires.
        var timer: ContinuousClock.Instant?

        var isEmpty: Bool { queue.isEmpty && (batcher?.isEmpty ?? true) }
    }

    private typealias Worker = CheckedContinuation<(String, Work)?, Never>

    private struct State {
        var lanes: [String: Lane] = [:]
        var ready = CircularBuffer<String>()
        var idleWorkers = CircularBuffer<Worker>()
        var capacityWaiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        var idleWaiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var inFlight = 0
        var nextWaiterID = 0
        var closed = false
        /// Draining: batches go without waiting for company.
        var hurry = false
    }

    /// Timers to start once the lock is released, and workers to wake.
    private struct Effects {
        var timers: [(lane: String, at: ContinuousClock.Instant)] = []
        var handoffs: [(Worker, (String, Work))] = []
    }

    private let state = Mutex(State())
    let capacity: Int
    /// Sources waiting for room are woken once this many jobs are in flight or fewer: a quarter of
    /// the capacity free, not one place. At full capacity, waking the source for every completed
    /// job made a thread switch per message (the source enqueues one, waits again).
    let wakeSourcesAt: Int

    init(capacity: Int) {
        self.capacity = capacity
        wakeSourcesAt = capacity - max(1, capacity / 4)
    }

    /// Jobs queued or running, batched ones waiting for company included.
    var inFlight: Int { state.withLock { $0.inFlight } }

    /// Queues `jobs` on lanes without batching.
    func enqueue(_ jobs: [(lane: String, job: Job)]) async throws {
        try await enqueue(jobs.map { Entry(lane: $0.lane, job: $0.job) })
    }

    /// Queues `entries`, waiting first until there is room. Checking for room and taking it is
    /// one step, so that waiters woken together cannot overfill the queue.
    /// - Throws: `CancellationError` when the calling task is cancelled while it waits, or the
    ///   scheduler is closed.
    func enqueue(_ entries: [Entry]) async throws {
        guard !entries.isEmpty else { return }
        while true {
            let outcome: (effects: Effects, waiter: Int?) = try state.withLock { s throws(CancellationError) in
                if s.closed { throw CancellationError() }
                guard s.inFlight < capacity else {
                    s.nextWaiterID += 1
                    return (Effects(), s.nextWaiterID)
                }
                s.inFlight += entries.count
                var effects = Effects()
                let now = ContinuousClock.now
                for entry in entries {
                    if let placement = entry.batch {
                        s.lanes[entry.lane, default: Lane(batcher: Batcher(limits: placement.limits))].batcher?.append(
                            entry.job, key: placement.key, bytes: placement.bytes, conflationKey: placement.conflationKey, now: now)
                        Self.refresh(&s, lane: entry.lane, now: now, effects: &effects)
                    } else {
                        s.lanes[entry.lane, default: Lane()].queue.append(entry.job)
                        if !s.lanes[entry.lane]!.busy, s.lanes[entry.lane]!.queue.count == 1 {
                            s.ready.append(entry.lane)
                        }
                    }
                }
                Self.wakeIdle(&s, now: now, effects: &effects)
                return (effects, nil)
            }
            guard let id = outcome.waiter else {
                perform(outcome.effects)
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

    /// A batched lane that is not running: listed when a batch is due, else its timer armed
    /// for when one will be.
    private static func refresh(_ s: inout State, lane: String, now: ContinuousClock.Instant, effects: inout Effects) {
        guard let index = s.lanes.index(forKey: lane), !s.lanes.values[index].busy, !s.lanes.values[index].listed,
            let batcher = s.lanes.values[index].batcher, !batcher.isEmpty
        else { return }
        guard !s.hurry, let deadline = batcher.nextDeadline(now: now) else {
            s.lanes.values[index].listed = true
            s.ready.append(lane)
            return
        }
        if let armed = s.lanes.values[index].timer, armed <= deadline { return }
        s.lanes.values[index].timer = deadline
        effects.timers.append((lane, deadline))
    }

    private static func wakeIdle(_ s: inout State, now: ContinuousClock.Instant, effects: inout Effects) {
        while !s.idleWorkers.isEmpty, let handoff = takeReady(&s, now: now) {
            effects.handoffs.append((s.idleWorkers.removeFirst(), handoff))
        }
    }

    private func perform(_ effects: Effects) {
        for (worker, work) in effects.handoffs { worker.resume(returning: work) }
        for (lane, deadline) in effects.timers {
            Task {
                try? await Task.sleep(until: deadline, clock: .continuous)
                self.timerFired(lane: lane, deadline: deadline)
            }
        }
    }

    private func timerFired(lane: String, deadline: ContinuousClock.Instant) {
        let effects = state.withLock { s in
            var effects = Effects()
            guard !s.closed, let index = s.lanes.index(forKey: lane), s.lanes.values[index].timer == deadline else { return effects }
            s.lanes.values[index].timer = nil
            let now = ContinuousClock.now
            Self.refresh(&s, lane: lane, now: now, effects: &effects)
            Self.wakeIdle(&s, now: now, effects: &effects)
            return effects
        }
        perform(effects)
    }

    private static func takeReady(_ s: inout State, now: ContinuousClock.Instant) -> (String, Work)? {
        while let lane = s.ready.popFirst() {
            // Changed in place: a copy of the lane taken out of the dictionary would share its
            // queue's storage, and the pop would then copy the whole queue (every job of the lane).
            guard let index = s.lanes.index(forKey: lane), !s.lanes.values[index].busy else { continue }
            if s.lanes.values[index].batcher != nil {
                s.lanes.values[index].listed = false
                let clock = s.hurry ? now + .seconds(86_400) : now
                guard let batch = s.lanes.values[index].batcher?.takeDue(now: clock) else { continue }
                s.lanes.values[index].busy = true
                return (lane, .batch(batch))
            }
            guard let job = s.lanes.values[index].queue.popFirst() else { continue }
            s.lanes.values[index].busy = true
            return (lane, .one(job))
        }
        return nil
    }

    /// The next work for a worker; nil once the scheduler is closed.
    func next() async -> (lane: String, work: Work)? {
        let taken: (String, Work)?? = state.withLock { s in
            if s.closed { return .some(nil) }
            if let work = Self.takeReady(&s, now: .now) { return .some(work) }
            return nil
        }
        if let taken { return taken.map { ($0.0, $0.1) } }
        let work = await withCheckedContinuation { (c: Worker) in
            let immediate: (String, Work)?? = state.withLock { s in
                if s.closed { return .some(nil) }
                if let work = Self.takeReady(&s, now: .now) { return .some(work) }
                s.idleWorkers.append(c)
                return nil
            }
            if let immediate { c.resume(returning: immediate) }
        }
        return work.map { ($0.0, $0.1) }
    }

    /// Marks the running work of `lane` done (`count` jobs), freeing its lane and places in the
    /// queue. The caller (a worker) must call ``next()`` next.
    func complete(lane: String, count: Int = 1) {
        var waiters: [CheckedContinuation<Void, any Error>] = []
        var idle: [CheckedContinuation<Bool, Never>] = []
        let effects = state.withLock { s in
            var effects = Effects()
            s.inFlight -= count
            if let index = s.lanes.index(forKey: lane) {
                if s.lanes.values[index].isEmpty {
                    s.lanes.remove(at: index)
                } else {
                    s.lanes.values[index].busy = false
                    let now = ContinuousClock.now
                    if s.lanes.values[index].batcher != nil {
                        Self.refresh(&s, lane: lane, now: now, effects: &effects)
                    } else {
                        s.ready.append(lane)
                    }
                    // No idle worker is woken for the lane: the caller asks for its next work
                    // right away and takes it (on its own thread, next to its connection).
                }
            }
            if s.inFlight <= wakeSourcesAt, !s.capacityWaiters.isEmpty {
                waiters = Array(s.capacityWaiters.values)
                s.capacityWaiters.removeAll()
            }
            if s.inFlight == 0 {
                idle = Array(s.idleWaiters.values)
                s.idleWaiters.removeAll()
            }
            return effects
        }
        perform(effects)
        for w in waiters { w.resume() }
        for w in idle { w.resume(returning: true) }
    }

    /// From now on batches go as soon as their lane is free, without waiting for company: the
    /// drain at shutdown.
    func hurry() {
        let effects = state.withLock { s in
            var effects = Effects()
            s.hurry = true
            let now = ContinuousClock.now
            for lane in s.lanes.keys { Self.refresh(&s, lane: lane, now: now, effects: &effects) }
            Self.wakeIdle(&s, now: now, effects: &effects)
            return effects
        }
        perform(effects)
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

    /// Stops handing out jobs: idle workers get nil. Returns the jobs that were still queued or
    /// waiting in a batch (not running), so that their deliveries can be settled.
    func close() -> [Job] {
        var workers: [Worker] = []
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
                lane.queue.removeAll()
                if var batcher = lane.batcher {
                    for batch in batcher.flush() { jobs += batch.items + batch.superseded }
                    lane.batcher = batcher
                }
                s.lanes[key] = lane.busy ? lane : nil
            }
            s.inFlight -= jobs.count
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
