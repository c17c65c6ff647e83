import DequeModule

/// The offsets of one assigned partition that were taken but not yet settled, and the position
/// that may be committed: just past the highest offset below which everything is settled.
///
/// Messages settle out of order (lanes run in parallel, retries take their time), but a commit
/// says "everything before this offset is done", so it may only move past a contiguous run of
/// acknowledged offsets. A message that failed (not delivered at shutdown, or its dead letter
/// could not be written) holds the commit below it for as long as this assignment lives, so
/// that the next consumer reads it again.
struct PartitionOffsets: Sendable {
    /// Which assignment of the partition this is: acknowledgements for an earlier one (the
    /// partition was revoked and assigned again meanwhile) are ignored.
    let generation: Int
    /// Taken offsets, oldest first, up to the first unsettled one and everything after it.
    private(set) var pending: Deque<Int64> = []
    /// Settled offsets still in `pending` behind an unsettled one.
    private var acked: Set<Int64> = []
    private var failed: Set<Int64> = []
    /// One past the highest offset taken; nil until one was.
    private(set) var next: Int64?
    /// The last position committed (or known committed).
    var committed: Int64?

    init(generation: Int) {
        self.generation = generation
    }

    /// Records an offset the consumer returned. Offsets of a partition come in increasing order.
    mutating func taken(_ offset: Int64) {
        pending.append(offset)
        next = offset + 1
    }

    /// Records that an offset is done (sent or dead-lettered).
    mutating func ack(_ offset: Int64) {
        acked.insert(offset)
        while let first = pending.first, acked.remove(first) != nil {
            pending.removeFirst()
        }
    }

    /// Records that an offset will not be done in this run.
    mutating func fail(_ offset: Int64) {
        failed.insert(offset)
    }

    /// Forgets offsets from `offset` on: they were taken but dropped before being handed out
    /// (the partition is being revoked), so nothing waits for them.
    mutating func drop(from offset: Int64) {
        while let last = pending.last, last >= offset {
            pending.removeLast()
            acked.remove(last)
            failed.remove(last)
        }
        if let n = next, n > offset { next = offset }
    }

    /// The offset to commit: the first unsettled one, or one past the last taken.
    var commitPosition: Int64? { pending.first ?? next }

    /// Whether a commit would move the committed position.
    var hasNewCommit: Bool {
        guard let position = commitPosition else { return false }
        return committed.map { position > $0 } ?? true
    }

    /// Offsets taken and neither acknowledged nor failed.
    var inFlight: Int { pending.count - acked.count - failed.count }
}
