import BridgeObservability
import CoreMetrics
import Foundation
package import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// Takes deliveries from sources, routes them, and sends them through the transport: ordered
/// per lane, many lanes at once, bounded in-flight work, retries with backoff, dead letters.
package final class Dispatcher: Sendable {
    struct Job: Sendable {
        let tracker: DeliveryTracker
        /// The routing table the job was planned with: its sinks stay open while jobs use it.
        let table: RoutingTable
        let route: Route
        /// The dead-letter sink of routes without one, as configured when the job was planned.
        let fallbackDeadLetter: (any SinkAdapter)?
        let targetLabel: String
        let resolved: Result<ResolvedTarget, DeliveryFailure>
        let payload: ByteBuffer
        let dataType: DataType
        let metrics: TargetMetrics
        /// Its element of a batch's JSON array (`batch:` routes; nil when it cannot be batched).
        let element: [UInt8]?
    }

    /// Routes with their metrics and dead-letter sinks: swapped whole by a reload.
    final class RoutingTable: Sendable {
        let routes: [Route]
        let routesBySource: [String: [Int]]
        let deadLetter: (any SinkAdapter)?
        /// By route, then target; one more per route for input that could not be read.
        let targetMetrics: [[TargetMetrics]]

        init(routes: [Route], deadLetter: (any SinkAdapter)?) {
            self.routes = routes
            var bySource: [String: [Int]] = [:]
            for (i, route) in routes.enumerated() { bySource[route.source, default: []].append(i) }
            routesBySource = bySource
            self.deadLetter = deadLetter
            targetMetrics = routes.map { route in
                route.targets.map { TargetMetrics(route: route.name, target: $0.description) } + [
                    TargetMetrics(route: route.name, target: "rejected input")
                ]
            }
        }

        var sinks: [any SinkAdapter] { routes.compactMap(\.deadLetter) + (deadLetter.map { [$0] } ?? []) }
        /// Jobs planned with this table and not yet settled (entered when a delivery takes the
        /// table, so that a reload that swapped it meanwhile still waits for them).
        let jobs = InFlight()
        /// Its sinks were closed (once: by the reload's closer or at the end).
        let closed = Atomic<Bool>(false)
    }

    private let table: Mutex<RoutingTable>
    /// Tables a reload replaced: their sinks are closed once no job uses them, or at the end.
    private let retired = Mutex<[RoutingTable]>([])
    private let sources = SourceSet()
    let transport: any DeliveryTransport
    let settings: DeliverySettings
    let logger: Logger
    package let stats = DispatchStats()
    private let scheduler: LaneScheduler<Job>
    private let laneCounter = Atomic<Int>(0)
    private let sourceMetrics = Mutex<[String: SourceMetrics]>([:])
    /// Paces sends once the service throttles (429).
    package let pacer = AdaptiveRate()
    /// Routes that wait for Web PubSub to take the bridge's credentials or to come back.
    package let conditions = RouteConditions()

    /// Where workers run: the transport's event loops, so that a send and its answer stay on one
    /// thread. Empty: Swift's global pool.
    let workerExecutors: [any TaskExecutor]

    package init(
        routes: [Route], transport: any DeliveryTransport, deadLetter: (any SinkAdapter)?, settings: DeliverySettings,
        workerExecutors: [any TaskExecutor] = [], logger: Logger
    ) {
        self.workerExecutors = workerExecutors
        self.table = Mutex(RoutingTable(routes: routes, deadLetter: deadLetter))
        self.transport = transport
        self.settings = settings
        self.logger = logger
        self.scheduler = LaneScheduler(capacity: settings.maxInFlight)
    }

    /// The routes in use.
    package var routes: [Route] { table.withLock { $0 }.routes }

    private func metrics(source: String) -> SourceMetrics {
        sourceMetrics.withLock { m in
            if let existing = m[source] { return existing }
            let made = SourceMetrics(source: source)
            m[source] = made
            return made
        }
    }

    /// Sends and retries under way or queued.
    package var inFlight: Int { scheduler.inFlight }

    /// Runs `sources` until each has ended or a graceful shutdown stops them, then waits for
    /// in-flight sends (bounded by `shutdownTimeout` once shutdown began), settles every
    /// delivery, and lets each source commit (`finish`).
    /// - Throws: the first error a source threw, after all of that.
    package func run(sources: [any SourceAdapter]) async throws {
        var intakeError: (any Error)?
        await withDiscardingTaskGroup { workers in
            for index in 0..<settings.concurrency {
                let executor = workerExecutors.isEmpty ? nil : workerExecutors[index % workerExecutors.count]
                workers.addTask(executorPreference: executor) { await self.work() }
            }
            do {
                try await cancelWhenGracefulShutdown {
                    try await self.intake(sources)
                }
            } catch is CancellationError {
            } catch {
                intakeError = error
            }
            // Before the drain's end: a reload from now on is refused, and one under way ends first.
            self.sources.cancelAll()
            // Nothing more comes: batches go without waiting for company.
            scheduler.hurry()
            let drained = await drain()
            if !drained {
                logger.warning(
                    "shutdown timeout: giving up in-flight sends",
                    metadata: [LogKey.inFlight: "\(scheduler.inFlight)", LogKey.timeout: "\(settings.shutdownTimeout)"])
            }
            // Close first, so that no worker takes another job, then stop the sends under way.
            for job in scheduler.close() {
                settle(job, .failed("not sent before shutdown"))
            }
            if !drained { workers.cancelAll() }
        }
        for entry in await self.sources.close() {
            await entry.stopped()
            do {
                try await entry.source.finish()
            } catch {
                logger.error("source could not finish cleanly", metadata: [LogKey.source: "\(entry.source.name)", LogKey.error: "\(error)"])
                if intakeError == nil { intakeError = error }
            }
        }
        let tables = [table.withLock { $0 }] + retired.withLock { $0 }
        let sinks = tables.filter { $0.closed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged }.flatMap(\.sinks)
        for sink in sinks {
            do { try await sink.close() } catch {
                logger.error("dead-letter sink could not be closed", metadata: [LogKey.sink: "\(sink.description)", LogKey.error: "\(error)"])
            }
        }
        if let intakeError { throw intakeError }
    }

    /// Reads every source until each has ended (or the task is cancelled: shutdown).
    private func intake(_ initial: [any SourceAdapter]) async throws {
        for source in initial { start(source) }
        sources.markStarted()
        await withTaskCancellationHandler {
            await sources.waitUntilAllEnded()
        } onCancel: {
            sources.cancelAll()
        }
        if let error = sources.firstError { throw error }
    }

    @discardableResult
    private func start(_ source: any SourceAdapter) -> Bool {
        sources.start(source) { delivery, entry in
            // Counted until settled, so that a source that is stopped alone commits after its last one.
            entry.pending.enter()
            let counted = Delivery(message: delivery.message, rejection: delivery.rejection) { outcome in
                delivery.complete(outcome)
                entry.pending.leave()
            }
            try await self.accept(counted, from: source.name)
        }
    }

    /// A reload: stops the sources in `removing` (each commits once what it had in flight is
    /// settled, for `shutdownTimeout` at most), swaps the routes and dead-letter sinks, then
    /// starts `adding`. Sources in neither go on untouched, and so do sends already planned.
    package enum ReloadResult: Sendable {
        case applied
        /// Not started yet, stopping or stopped: nothing was changed.
        case notRunning
        /// The dispatcher began stopping during the reload: routes and sinks were swapped, new
        /// sources may not have started.
        case interrupted
    }

    @discardableResult
    package func reload(removing: [String], routes: [Route], deadLetter: (any SinkAdapter)?, adding: [any SourceAdapter]) async -> ReloadResult {
        guard sources.hold() else { return .notRunning }
        defer { sources.release() }
        // Stopped side by side, each committing once its own deliveries are settled.
        await withDiscardingTaskGroup { group in
            for name in removing {
                group.addTask {
                    guard let entry = await self.sources.remove(name) else { return }
                    _ = await entry.pending.drained(within: self.settings.shutdownTimeout)
                    do {
                        try await entry.source.finish()
                    } catch {
                        self.logger.error("removed source could not finish cleanly", metadata: [LogKey.source: "\(name)", LogKey.error: "\(error)"])
                    }
                    self.logger.info("source stopped by a reload", metadata: [LogKey.source: "\(name)"])
                }
            }
        }
        let old = table.withLock { t in
            defer { t = RoutingTable(routes: routes, deadLetter: deadLetter) }
            return t
        }
        retired.withLock { $0.append(old) }
        conditions.retain(routes: Set(routes.map(\.name)))
        // Its dead-letter sinks (a file, a producer) are closed once the jobs planned with it are settled.
        Task { [logger] in
            await old.jobs.drained()
            guard old.closed.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            for sink in old.sinks {
                do { try await sink.close() } catch {
                    logger.error(
                        "replaced dead-letter sink could not be closed", metadata: [LogKey.sink: "\(sink.description)", LogKey.error: "\(error)"])
                }
            }
        }
        for source in adding {
            if start(source) {
                logger.info("source started by a reload", metadata: [LogKey.source: "\(source.name)"])
            } else {
                logger.error(
                    "source not started by the reload: one of that name still runs, or the bridge is stopping",
                    metadata: [LogKey.source: "\(source.name)"])
            }
        }
        return sources.isStopping ? .interrupted : .applied
    }

    /// Waits until nothing is in flight; once a graceful shutdown began, for `shutdownTimeout` at most.
    private func drain() async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.scheduler.waitUntilIdle() }
            group.addTask {
                do {
                    try await gracefulShutdown()
                    try await Task.sleep(for: self.settings.shutdownTimeout)
                } catch {}
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Routes one delivery and queues its sends; suspends while the dispatcher is full.
    func accept(_ delivery: Delivery, from source: String) async throws {
        stats.received.add(1, ordering: .relaxed)
        let sourceMetrics = metrics(source: source)
        sourceMetrics.received.increment()
        let message = delivery.message
        let context = MessageContext(message)
        // Counted as it is taken: a reload that swaps the table now still waits for this delivery.
        let table = self.table.withLock { t in
            t.jobs.enter()
            return t
        }
        defer { table.jobs.leave() }
        var sends: [PlannedSend] = []
        if let rejection = delivery.rejection {
            // Input the source could not read: straight to the dead-letter sink of the source's first route.
            if let routeIndex = table.routesBySource[source]?.first {
                sends.append(
                    PlannedSend(
                        lane: "\(table.routes[routeIndex].name)/rejected/\(message.laneKey)", routeIndex: routeIndex,
                        targetIndex: table.routes[routeIndex].targets.count,
                        targetLabel: "none (rejected input)", resolved: .failure(DeliveryFailure(.permanent, message: rejection)),
                        dataType: message.dataType, batch: nil))
            }
        } else {
            sends = plan(message, context: context, source: source, table: table, metrics: sourceMetrics)
        }
        guard !sends.isEmpty else {
            if let rejection = delivery.rejection {
                logger.error("invalid input dropped", metadata: [LogKey.origin: "\(message.origin.description)", LogKey.error: "\(rejection)"])
            } else {
                stats.unrouted.add(1, ordering: .relaxed)
                sourceMetrics.unrouted.increment()
                logger.debug("message matched no route", metadata: [LogKey.origin: "\(message.origin.description)"])
            }
            delivery.ack()
            return
        }
        let tracker = DeliveryTracker(delivery, sends: sends.count)
        let jobs = sends.map { send in
            LaneScheduler<Job>.Entry(
                lane: send.lane,
                job: Job(
                    tracker: tracker, table: table, route: table.routes[send.routeIndex], fallbackDeadLetter: table.deadLetter,
                    targetLabel: send.targetLabel,
                    resolved: send.resolved, payload: message.payload, dataType: send.dataType,
                    metrics: table.targetMetrics[send.routeIndex][send.targetIndex], element: send.batch?.element),
                batch: send.batch?.placement)
        }
        for entry in jobs { entry.job.metrics.inFlight.increment() }
        table.jobs.enter(jobs.count)
        do {
            try await scheduler.enqueue(jobs)
        } catch {
            for entry in jobs { entry.job.metrics.inFlight.decrement() }
            table.jobs.leave(jobs.count)
            stats.unsettled.add(1, ordering: .relaxed)
            delivery.nack("shutting down before it was queued")
            throw error
        }
    }

    /// One send a message makes, before it is queued.
    struct PlannedSend {
        let lane: String
        let routeIndex: Int
        let targetIndex: Int
        let targetLabel: String
        let resolved: Result<ResolvedTarget, DeliveryFailure>
        let dataType: DataType
        /// Its place in a batch, and its element of the batch's array, on a `batch:` route.
        let batch: (placement: BatchPlacement, element: [UInt8]?)?
    }

    /// The sends a message makes: one per target of each matching route.
    private func plan(_ message: Message, context: MessageContext, source: String, table: RoutingTable, metrics: SourceMetrics) -> [PlannedSend] {
        var sends: [PlannedSend] = []
        for routeIndex in table.routesBySource[source] ?? [] {
            let route = table.routes[routeIndex]
            if let condition = route.condition, !condition.matches(context) { continue }
            for (targetIndex, target) in route.targets.enumerated() {
                var resolved: Result<ResolvedTarget, DeliveryFailure>
                do {
                    resolved = .success(try target.resolve(context))
                } catch {
                    resolved = .failure(DeliveryFailure(.permanent, message: error.message))
                }
                // A client event mirrored from this very hub does not go back to it.
                if case .success(let t) = resolved, !route.forwardMirrored, let from = context.header("wps-mirrored-from"),
                    from.caseInsensitiveCompare(t.hub) == .orderedSame
                {
                    stats.loopsPrevented.add(1, ordering: .relaxed)
                    metrics.loopsPrevented.increment()
                    continue
                }
                let dataType = target.dataType ?? message.dataType
                if case .success = resolved, dataType == .json, message.dataType != .json {
                    do {
                        _ = try context.json()
                    } catch {
                        resolved = .failure(DeliveryFailure(.permanent, message: "target wants JSON but the payload is not JSON (\(error))"))
                    }
                }
                let batch = route.batch.map {
                    placement(in: $0, route: route, message: message, context: context, resolved: resolved, dataType: dataType)
                }
                var lane: String
                switch route.ordering {
                case .strict: lane = "\(route.name)/\(targetIndex)/\(message.laneKey)"
                case .key: lane = "\(route.name)/\(targetIndex)/" + (message.key.map { "k" + $0 } ?? message.laneKey)
                case .none:
                    if let key = batch?.placement.key {
                        // Batches of one target share a lane, so that they fill; targets spread over the lanes.
                        lane = "\(route.name)/\(targetIndex)/u\(UInt(bitPattern: key.hashValue) % UInt(settings.concurrency))"
                    } else {
                        lane = "#\(laneCounter.wrappingAdd(1, ordering: .relaxed).newValue)"
                    }
                }
                // A batched lane never shares a name with a plain one (a reload may turn batching on).
                if batch != nil { lane += "/b" }
                sends.append(
                    PlannedSend(
                        lane: lane, routeIndex: routeIndex, targetIndex: targetIndex, targetLabel: target.description, resolved: resolved,
                        dataType: dataType, batch: batch))
            }
        }
        return sends
    }

    private func work() async {
        while let (lane, work) = await scheduler.next() {
            switch work {
            case .one(let job):
                settle(job, await process(job))
            case .batch(let batch):
                await process(batch)
            }
            scheduler.complete(lane: lane, count: work.count)
        }
    }

    func settle(_ job: Job, _ outcome: DeliveryOutcome) {
        job.table.jobs.leave()
        job.metrics.inFlight.decrement()
        if case .failed = outcome { job.metrics.unsettled.increment() }
        if case .failed = job.tracker.settle(outcome) { stats.unsettled.add(1, ordering: .relaxed) }
    }
}
