import BridgeObservability
import CoreMetrics
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// One job's sends: resolving its target, the transport call with retries and backoff, and the dead letter when it gives up.
extension Dispatcher {
    func process(_ job: Job) async -> DeliveryOutcome {
        if Task.isCancelled { return .failed("shutdown before it was sent") }
        let target: ResolvedTarget
        switch job.resolved {
        case .failure(let failure):
            return await giveUp(job, failure, attempts: 0)
        case .success(let t):
            target = t
        }
        switch await deliver(job.payload, dataType: job.dataType, to: target, route: job.route.name, metrics: job.metrics) {
        case .accepted:
            stats.delivered.add(1, ordering: .relaxed)
            job.metrics.delivered.increment()
            job.metrics.recordLatency(since: job.tracker.delivery.message.timestamp)
            return .done
        case .gaveUp(let failure, let attempts):
            return await giveUp(job, failure, attempts: attempts)
        case .interrupted(let reason):
            return .failed(reason)
        }
    }

    /// How one send ended.
    enum SendResult {
        case accepted
        /// A permanent failure, or retries used up.
        case gaveUp(DeliveryFailure, attempts: Int)
        /// Shutdown: not settled.
        case interrupted(String)
    }

    /// One send with its retries: paced, retried with backoff, waiting while the route's
    /// condition (credentials, an outage) holds.
    /// - Parameter canGrow: a batch that had room: a 429 lets the next batches grow (the lane
    ///   waits for the retry) before the pacer cuts the rate.
    func deliver(
        _ payload: ByteBuffer, dataType: DataType, to target: ResolvedTarget, route: String, metrics: TargetMetrics, canGrow: Bool = false
    ) async -> SendResult {
        var attempt = 1
        while true {
            if Task.isCancelled { return .interrupted("shutdown before it was sent") }
            let failure: DeliveryFailure
            do {
                try await pacer.acquire()
            } catch {
                return .interrupted("shutdown before it was sent")
            }
            do {
                try await transport.send(payload, dataType: dataType, to: target)
                pacer.accepted()
                stats.sends.add(1, ordering: .relaxed)
                if let (condition, waited) = conditions.accepted(route: route) {
                    logger.notice(
                        "route resumed: Web PubSub accepts sends again",
                        metadata: [LogKey.route: "\(route)", LogKey.waited: "\(waited)", LogKey.condition: "\(RouteConditions.summary(condition))"])
                }
                return .accepted
            } catch let error as DeliveryFailure {
                failure = error
            } catch is CancellationError {
                return .interrupted("shutdown while it was being sent")
            } catch {
                failure = DeliveryFailure(.retryable(retryAfter: nil), message: "\(error)")
            }
            if failure.status == 429 { stats.throttled.add(1, ordering: .relaxed) }
            if failure.status == 429, let rate = pacer.throttledResponse(cut: !canGrow) {
                logger.notice(
                    "Web PubSub answers 429 (too many requests): sends are paced from now on, adapting to what it accepts",
                    metadata: [LogKey.rate: "\(Int(rate))/s"])
            }
            if Task.isCancelled { return .interrupted("shutdown while it was being sent") }
            if let pause = conditions.failed(route: route, failure) {
                // The route's condition, not this message's failure: wait, try again, and do not
                // count the attempt. Nothing is dead-lettered or acknowledged meanwhile.
                if let line = pause.log {
                    logger.error("\(line)", metadata: [LogKey.route: "\(route)", LogKey.target: "\(target)", LogKey.error: "\(failure)"])
                }
                stats.retried.add(1, ordering: .relaxed)
                metrics.retried.increment()
                var retryAfter: Duration?
                if case .retryable(let after) = failure.kind { retryAfter = after }
                do {
                    try await Task.sleep(for: settings.retry.delay(attempt: pause.probe, retryAfter: retryAfter))
                } catch {
                    return .interrupted("shutdown while waiting for Web PubSub")
                }
                continue
            }
            guard case .retryable(let retryAfter) = failure.kind, attempt < settings.retry.maxAttempts else {
                return .gaveUp(failure, attempts: attempt)
            }
            let delay = settings.retry.delay(attempt: attempt, retryAfter: retryAfter, throttled: failure.status == 429)
            stats.retried.add(1, ordering: .relaxed)
            metrics.retried.increment()
            logger.debug(
                "send failed, retrying",
                metadata: [
                    LogKey.route: "\(route)", LogKey.target: "\(target)", LogKey.attempt: "\(attempt)",
                    LogKey.delay: "\(delay)", LogKey.error: "\(failure)",
                ])
            do {
                try await Task.sleep(for: delay)
            } catch {
                return .interrupted("shutdown while waiting to retry")
            }
            attempt += 1
        }
    }

    /// A permanent failure (or retries used up): log it once and write the dead letter.
    /// - Parameter batchSize: the messages of the batch that carried it, when it was batched.
    func giveUp(_ job: Job, _ failure: DeliveryFailure, attempts: Int, batchSize: Int? = nil) async -> DeliveryOutcome {
        let route = job.route
        let message = job.tracker.delivery.message
        let target: String
        switch job.resolved {
        case .success(let t): target = t.description
        case .failure: target = job.targetLabel
        }
        var metadata: Logger.Metadata = [
            LogKey.route: "\(route.name)", LogKey.target: "\(target)", LogKey.origin: "\(message.origin.description)",
            LogKey.attempts: "\(attempts)", LogKey.error: "\(failure.message)",
        ]
        if let batchSize { metadata[LogKey.batchSize] = "\(batchSize)" }
        if let status = failure.status { metadata[LogKey.status] = "\(status)" }
        guard let sink = route.deadLetter ?? job.fallbackDeadLetter, !(sink is DropSink) else {
            stats.dropped.add(1, ordering: .relaxed)
            job.metrics.dropped.increment()
            logger.error(
                (route.deadLetter ?? job.fallbackDeadLetter) is DropSink
                    ? "delivery failed; message dropped (deadLetter: {type: drop})"
                    : "delivery failed; no deadLetter sink is configured, message dropped",
                metadata: metadata)
            return .done
        }
        metadata[LogKey.deadLetter] = "\(sink.description)"
        if job.tracker.delivery.rejection != nil {
            logger.error("invalid input; dead-lettered", metadata: metadata)
        } else {
            logger.error("delivery failed; message dead-lettered", metadata: metadata)
        }
        var headers = message.headers
        headers["wps-error"] = failure.message
        if let status = failure.status { headers["wps-status"] = String(status) }
        headers["wps-route"] = route.name
        headers["wps-target"] = target
        headers["wps-source"] = message.origin.description
        headers["wps-attempts"] = String(attempts)
        if let batchSize { headers["wps-batch-size"] = String(batchSize) }
        headers["wps-failed-at"] = ISO8601DateFormatter().string(from: Date())
        let record = SinkRecord(payload: message.payload, dataType: message.dataType, key: message.key, headers: headers)
        do {
            try await sink.write(record)
            stats.deadLettered.add(1, ordering: .relaxed)
            job.metrics.deadLettered.increment()
            return .done
        } catch {
            logger.error(
                "dead-letter write failed; the message stays unacknowledged",
                metadata: metadata.merging([LogKey.sinkError: "\(error)"]) { $1 })
            return .failed("dead-letter write failed: \(error)")
        }
    }
}
