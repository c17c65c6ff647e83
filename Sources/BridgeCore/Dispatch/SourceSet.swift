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

    private struct State {
        var entries: [String: Entry] = [:]
        var firstError: (any Error)?
        /// Held while a reload swaps sources, so that a moment without any does not end intake.
        var holds = 0
        var cancelled = false
        /// The dispatcher is done with its sources: nothing starts any more.
        var closed = false
        /// The first sources were started: reloads may come.
        var started = false
        /// `close` waits for the reload that holds the set.
        var holdWaiters: [CheckedContinuation<Void, Never>] = []
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    /// Starts reading `source`; `emit` hands its deliveries to the dispatcher. False when the
    /// set is closed (the dispatcher has finished) or a source of that name is listed.
    @discardableResult
    func start(_ source: any SourceAdapter, emit: @escaping @Sendable (Delivery, Entry) async throws -> Void) -> Bool {
        let entry = Entry(source)
        let added = state.withLock { s -> Bool in
            guard !s.closed, !s.cancelled, s.entries[source.name] == nil else { return false }
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
        if state.withLock({ $0.cancelled }) { task.cancel() }
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
        guard s.holds == 0 || s.cancelled, !s.entries.values.contains(where: { $0.running.load(ordering: .relaxed) }) else { return [] }
        defer { s.waiters.removeAll() }
        return s.waiters
    }

    /// Stops reading every source.
    func cancelAll() {
        let (entries, waiters) = state.withLock { s in
            s.cancelled = true
            return (Array(s.entries.values), wakeable(&s))
        }
        for entry in entries { entry.task.withLock { $0 }?.cancel() }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when every source's `run` has returned (and no reload holds the set).
    func waitUntilAllEnded() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                if s.holds == 0 || s.cancelled, !s.entries.values.contains(where: { $0.running.load(ordering: .relaxed) }) { return true }
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
    func markStarted() { state.withLock { $0.started = true } }

    var isStopping: Bool { state.withLock { $0.cancelled || $0.closed } }

    /// Keeps `waitUntilAllEnded` waiting while sources are swapped. False before the first
    /// sources run and once the dispatcher is stopping: then a reload must not change anything.
    func hold() -> Bool {
        state.withLock { s in
            guard s.started, !s.cancelled, !s.closed else { return false }
            s.holds += 1
            return true
        }
    }

    /// No source starts from now on (the dispatcher is stopping); returns the ones listed,
    /// for `finish`, once no reload holds the set.
    func close() async -> [Entry] {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                s.closed = true
                if s.holds == 0 { return true }
                s.holdWaiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
        return entries
    }

    func release() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.holds -= 1
            var waiters = wakeable(&s)
            if s.holds == 0 {
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
