import Synchronization

/// The sources the dispatcher reads, each in a task of its own so that one can be stopped (a
/// reload) while the others go on; with what each has in flight, so that a stopped one can
/// commit once its deliveries are settled.
final class SourceSet: Sendable {
    final class Entry: Sendable {
        let source: any SourceAdapter
        /// Deliveries accepted and not yet settled.
        let pending = InFlight()
        /// Until its `run` returned.
        let running = Atomic<Bool>(true)
        fileprivate let task = Mutex<Task<Void, Never>?>(nil)

        init(_ source: any SourceAdapter) {
            self.source = source
        }

        /// Waits until the source's `run` returned.
        func stopped() async {
            await task.withLock { $0 }?.value
        }
    }

    /// The set's lifecycle as a state machine: each event returns what to do, and the tests
    /// drive it transition by transition (`SourceSetLifecycleTests`). Entries and continuations
    /// stay outside it; the machine only decides.
    struct Lifecycle {
        enum Phase: Equatable {
            /// Sources may start; reloads may not hold the set yet.
            case starting
            /// The first sources run: reloads may hold the set.
            case running
            /// Every source was told to stop: nothing starts, nothing holds.
            case cancelled
        }

        private(set) var phase = Phase.starting
        /// The dispatcher is done with its sources: nothing starts any more.
        private(set) var closed = false
        /// Reloads swapping sources: while one holds the set, a moment without sources does not end intake.
        private(set) var holds = 0

        /// Whether a source may start now.
        var mayStart: Bool { !closed && phase != .cancelled }

        var isStopping: Bool { closed || phase == .cancelled }

        mutating func markStarted() {
            if phase == .starting { phase = .running }
        }

        mutating func cancel() { phase = .cancelled }

        /// A reload asks to hold the set; false before the first sources run and once stopping.
        mutating func hold() -> Bool {
            guard phase == .running, !closed else { return false }
            holds += 1
            return true
        }

        /// A reload is done. Returns whether the set is free now (`close` may go on).
        mutating func release() -> Bool {
            precondition(holds > 0, "release without hold")
            holds -= 1
            return holds == 0
        }

        /// Nothing starts from now on. Returns whether `close` may go on at once (no reload holds the set).
        mutating func close() -> Bool {
            closed = true
            return holds == 0
        }

        /// Whether those waiting for every source to end may be woken, given whether any still runs:
        /// a reload's hold keeps them waiting, unless the set is stopping.
        func allEnded(anyRunning: Bool) -> Bool {
            !anyRunning && (holds == 0 || phase == .cancelled)
        }
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var firstError: (any Error)?
        var lifecycle = Lifecycle()
        /// `close` waits for the reload that holds the set.
        var holdWaiters: [CheckedContinuation<Void, Never>] = []
        var waiters: [CheckedContinuation<Void, Never>] = []

        var anyRunning: Bool { entries.values.contains { $0.running.load(ordering: .relaxed) } }
    }

    private let state = Mutex(State())

    /// Starts reading `source`; `emit` hands its deliveries to the dispatcher. False when the
    /// set is closed (the dispatcher has finished) or a source of that name is listed.
    @discardableResult
    func start(_ source: any SourceAdapter, emit: @escaping @Sendable (Delivery, Entry) async throws -> Void) -> Bool {
        let entry = Entry(source)
        let added = state.withLock { s -> Bool in
            guard s.lifecycle.mayStart, s.entries[source.name] == nil else { return false }
            s.entries[source.name] = entry
            return true
        }
        guard added else { return false }
        let task = Task {
            do {
                try await source.run(emit: DeliveryEmitter { delivery in try await emit(delivery, entry) })
            } catch is CancellationError {
            } catch {
                self.failed(error)
            }
            self.ended(entry)
        }
        entry.task.withLock { $0 = task }
        // Checked after the task is stored: a `cancelAll` in between either saw the task or set
        // the flag read here.
        if state.withLock({ $0.lifecycle.phase == .cancelled }) { task.cancel() }
        return true
    }

    /// A source failed: the first error ends every source (the bridge stops).
    private func failed(_ error: any Error) {
        let first = state.withLock { s in
            defer { if s.firstError == nil { s.firstError = error } }
            return s.firstError == nil
        }
        if first { cancelAll() }
    }

    /// A source's `run` returned: it stays listed (for `finish`) unless it was removed.
    private func ended(_ entry: Entry) {
        entry.running.store(false, ordering: .relaxed)
        let waiters = state.withLock { s in wakeable(&s) }
        for waiter in waiters { waiter.resume() }
    }

    private func wakeable(_ s: inout State) -> [CheckedContinuation<Void, Never>] {
        // Once stopping, a reload's hold does not keep intake (and so the drain) waiting.
        guard s.lifecycle.allEnded(anyRunning: s.anyRunning) else { return [] }
        defer { s.waiters.removeAll() }
        return s.waiters
    }

    /// Stops reading every source.
    func cancelAll() {
        let (entries, waiters) = state.withLock { s in
            s.lifecycle.cancel()
            return (Array(s.entries.values), wakeable(&s))
        }
        for entry in entries { entry.task.withLock { $0 }?.cancel() }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when every source's `run` has returned (and no reload holds the set).
    func waitUntilAllEnded() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                if s.lifecycle.allEnded(anyRunning: s.anyRunning) { return true }
                s.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    var firstError: (any Error)? { state.withLock { $0.firstError } }

    /// The sources still listed, for `finish` at the end.
    var entries: [Entry] { state.withLock { Array($0.entries.values) } }

    /// The first sources run: from now on a reload may hold the set.
    func markStarted() { state.withLock { $0.lifecycle.markStarted() } }

    var isStopping: Bool { state.withLock { $0.lifecycle.isStopping } }

    /// Keeps `waitUntilAllEnded` waiting while sources are swapped. False before the first
    /// sources run and once the dispatcher is stopping: then a reload must not change anything.
    func hold() -> Bool {
        state.withLock { $0.lifecycle.hold() }
    }

    /// No source starts from now on (the dispatcher is stopping); returns the ones listed,
    /// for `finish`, once no reload holds the set.
    func close() async -> [Entry] {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                if s.lifecycle.close() { return true }
                s.holdWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
        return entries
    }

    func release() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            let free = s.lifecycle.release()
            var waiters = wakeable(&s)
            if free {
                waiters += s.holdWaiters
                s.holdWaiters.removeAll()
            }
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Stops reading a source and takes it off the set; returns it once its `run` returned.
    func remove(_ name: String) async -> Entry? {
        guard let entry = state.withLock({ $0.entries.removeValue(forKey: name) }) else { return nil }
        entry.task.withLock { $0 }?.cancel()
        await entry.stopped()
        return entry
    }
}
