import BridgeObservability
import CoreMetrics
import Logging
import NIOCore
import Synchronization
import WebPubSubProtocol

/// `batch:` routes: where a message goes in its lane's batcher, and the send of a whole batch.
extension Dispatcher {
    /// A message's place in a batch: by its resolved target and data type, with its element of
    /// the JSON array and its conflation key. One that cannot share a send (the target did not
    /// resolve, the payload is binary) gets no key and goes alone, as on a route without `batch:`.
    func placement(
        in limits: BatchSettings, route: Route, message: Message, context: MessageContext, resolved: Result<ResolvedTarget, DeliveryFailure>,
        dataType: DataType
    ) -> (placement: BatchPlacement, element: [UInt8]?) {
        guard case .success(let target) = resolved,
            let element = BatchPayload.element(Array(message.payload.readableBytesView), dataType: dataType)
        else {
            return (BatchPlacement(limits: limits, key: nil, bytes: message.payload.readableBytes, conflationKey: nil), nil)
        }
        var conflationKey: String?
        if let template = route.conflate {
            do {
                conflationKey = try template.render(context)
            } catch {
                // Without its key a message is not conflated: it is sent.
                logger.debug(
                    "conflate.key did not render; the message is sent without conflation",
                    metadata: [LogKey.route: "\(route.name)", LogKey.origin: "\(message.origin.description)", LogKey.error: "\(error)"])
            }
        }
        return (
            BatchPlacement(
                limits: limits, key: BatchKey(target: target, dataType: dataType), bytes: BatchPayload.cost(of: element),
                conflationKey: conflationKey),
            element
        )
    }

    /// Sends a batch as one JSON array and settles each of its messages: delivered when the
    /// send was accepted (superseded ones count as conflated), dead-lettered one by one when it
    /// failed for good, unacknowledged when shutdown interrupted it.
    func process(_ batch: Batcher<Job, BatchKey>.Batch) async {
        guard let key = batch.key, let first = batch.items.first, batch.items.allSatisfy({ $0.element != nil }) else {
            // Alone by nature: as on a route without batching.
            for job in batch.items { settle(job, await process(job)) }
            for job in batch.superseded { settle(job, .done) }
            return
        }
        if Task.isCancelled {
            for job in batch.items + batch.superseded { settle(job, .failed("shutdown before it was sent")) }
            return
        }
        let payload = BatchPayload.assemble(batch.items.map { $0.element ?? [] })
        var target = key.target
        // The array is JSON whatever its elements were.
        target.dataType = nil
        if !target.metadata.contains(where: { $0.key == "batch" }),
            case .success(let entries) = MessageMetadata.validated(
                target.metadata.map { ($0.key, $0.value) } + [("batch", String(batch.items.count))])
        {
            target.metadata = entries
        }
        let size = batch.items.count
        let full = size >= (first.route.batch?.maxMessages ?? 1)
        let result = await deliver(
            ByteBuffer(bytes: payload), dataType: .json, to: target, route: first.route.name, metrics: first.metrics, canGrow: !full)
        switch result {
        case .accepted:
            first.metrics.batchMessages.record(size)
            first.metrics.batchBytes.record(payload.count)
            stats.delivered.add(size, ordering: .relaxed)
            for job in batch.items {
                job.metrics.delivered.increment()
                job.metrics.recordLatency(since: job.tracker.delivery.message.timestamp)
                settle(job, .done)
            }
            settleSuperseded(batch.superseded)
        case .gaveUp(let failure, let attempts):
            for job in batch.items { settle(job, await giveUp(job, failure, attempts: attempts, batchSize: size)) }
            // The newest value of their key was dead-lettered in their place.
            settleSuperseded(batch.superseded)
        case .interrupted(let reason):
            for job in batch.items + batch.superseded { settle(job, .failed(reason)) }
        }
    }

    private func settleSuperseded(_ jobs: [Job]) {
        guard !jobs.isEmpty else { return }
        stats.conflated.add(jobs.count, ordering: .relaxed)
        for job in jobs {
            job.metrics.conflated.increment()
            settle(job, .done)
        }
    }
}
