/// A route's `batch:`: how many messages one REST send may carry, and how long the first waits.
package struct BatchSettings: Sendable, Equatable {
    package var maxMessages: Int
    package var maxBytes: Int
    package var maxDelay: Duration

    package static let defaults = BatchSettings(maxMessages: 100, maxBytes: 256 * 1024, maxDelay: .milliseconds(10))
    /// The service takes messages up to 1 MB.
    package static let maxBytesLimit = 1024 * 1024

    package init(maxMessages: Int, maxBytes: Int, maxDelay: Duration) {
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
        self.maxDelay = maxDelay
    }
}

/// Groups one lane's messages into batches for `batch:` routes: messages of the same key (a resolved target and data type) are sent together,
/// in the order they came, until `maxMessages`, `maxBytes` or `maxDelay` says the batch goes.
/// With a conflation key, a message replaces the older one of the same key in the batch still
/// filling (the older one is "superseded": delivered by the newer).
///
/// Pure: the caller passes the time and owns the locking; the tests drive it step by step.
struct Batcher<Item, Key: Hashable> {
    typealias Limits = BatchSettings

    /// A batch ready to send: `items` in the order they came; `superseded` were replaced by a
    /// newer item of their conflation key and go with the batch's outcome.
    struct Batch {
        var key: Key?
        var items: [Item]
        var superseded: [Item]
        var bytes: Int
    }

    private struct Entry {
        let item: Item
        let bytes: Int
        let conflationKey: String?
    }

    private struct Group {
        let id: Int
        let key: Key?
        /// In the order they came; nil where a newer entry of the same conflation key replaced one.
        var entries: [Entry?] = []
        /// Entries not replaced.
        var live = 0
        /// Where each conflation key's entry is, so that a replacement costs no search.
        var byConflationKey: [String: Int] = [:]
        var superseded: [Item] = []
        var bytes = 0
        let firstAt: ContinuousClock.Instant
        /// Full (or alone by nature): no more joins it; it is due at once.
        var sealed = false
    }

    let limits: Limits
    /// Groups in the order of their first item.
    private var groups: [Group] = []
    /// The group still filling, per key.
    private var open: [Key: Int] = [:]
    private var nextId = 0

    init(limits: Limits) {
        precondition(limits.maxMessages >= 1 && limits.maxBytes >= 1, "a batch holds at least one message")
        self.limits = limits
    }

    var isEmpty: Bool { groups.isEmpty }
    /// Items held, superseded ones included.
    var count: Int { groups.reduce(0) { $0 + $1.live + $1.superseded.count } }

    /// Adds an item. `key` nil: it cannot be batched (its target did not resolve) and goes alone,
    /// at once. `bytes` is what it adds to the batch's payload.
    mutating func append(_ item: Item, key: Key?, bytes: Int, conflationKey: String? = nil, now: ContinuousClock.Instant) {
        guard let key else {
            groups.append(
                Group(
                    id: takeId(), key: nil, entries: [Entry(item: item, bytes: bytes, conflationKey: nil)], live: 1, bytes: bytes, firstAt: now,
                    sealed: true))
            return
        }
        var replaced: Item?
        if let id = open[key], let index = groups.firstIndex(where: { $0.id == id }) {
            if let conflationKey, let older = groups[index].byConflationKey.removeValue(forKey: conflationKey),
                let entry = groups[index].entries[older]
            {
                groups[index].entries[older] = nil
                groups[index].live -= 1
                groups[index].bytes -= entry.bytes
                replaced = entry.item
            }
            if groups[index].bytes + bytes <= limits.maxBytes {
                if let replaced { groups[index].superseded.append(replaced) }
                add(Entry(item: item, bytes: bytes, conflationKey: conflationKey), to: index, key: key)
                return
            }
            // Would not fit: the filling group goes as it is, the item starts the next one.
            groups[index].sealed = true
            open[key] = nil
        }
        groups.append(Group(id: takeId(), key: key, firstAt: now))
        let index = groups.count - 1
        // What it replaced goes with it: settled by the send that carries the newer one.
        if let replaced { groups[index].superseded.append(replaced) }
        if bytes > limits.maxBytes {
            // Too big for any batch: it goes alone.
            groups[index].entries = [Entry(item: item, bytes: bytes, conflationKey: conflationKey)]
            groups[index].live = 1
            groups[index].bytes = bytes
            groups[index].sealed = true
            return
        }
        open[key] = groups[index].id
        add(Entry(item: item, bytes: bytes, conflationKey: conflationKey), to: index, key: key)
    }

    private mutating func add(_ entry: Entry, to index: Int, key: Key) {
        groups[index].entries.append(entry)
        groups[index].live += 1
        if let conflationKey = entry.conflationKey { groups[index].byConflationKey[conflationKey] = groups[index].entries.count - 1 }
        groups[index].bytes += entry.bytes
        if groups[index].live >= limits.maxMessages {
            groups[index].sealed = true
            open[key] = nil
        }
    }

    private mutating func takeId() -> Int {
        nextId += 1
        return nextId
    }

    private func isDue(_ group: Group, now: ContinuousClock.Instant) -> Bool {
        group.sealed || group.firstAt + limits.maxDelay <= now
    }

    /// The next batch to send: the oldest group if it is due, else the oldest full one (a full
    /// group never overtakes one of its own key, which was sealed before it was started).
    mutating func takeDue(now: ContinuousClock.Instant) -> Batch? {
        guard let head = groups.first else { return nil }
        let index = isDue(head, now: now) ? 0 : groups.firstIndex(where: \.sealed)
        guard let index else { return nil }
        return take(at: index)
    }

    /// When the oldest group still filling becomes due; nil when nothing waits for time (empty,
    /// or a group is due already: `takeDue` gives it now).
    func nextDeadline(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard let head = groups.first, !isDue(head, now: now), !groups.contains(where: \.sealed) else { return nil }
        return head.firstAt + limits.maxDelay
    }

    /// Every group as a batch, oldest first (a drain, or the lane closing).
    mutating func flush() -> [Batch] {
        var batches: [Batch] = []
        while !groups.isEmpty { batches.append(take(at: 0)) }
        return batches
    }

    private mutating func take(at index: Int) -> Batch {
        let group = groups.remove(at: index)
        if let key = group.key, open[key] == group.id { open[key] = nil }
        return Batch(key: group.key, items: group.entries.compactMap { $0?.item }, superseded: group.superseded, bytes: group.bytes)
    }
}

extension Batcher.Batch: Sendable where Item: Sendable, Key: Sendable {}
