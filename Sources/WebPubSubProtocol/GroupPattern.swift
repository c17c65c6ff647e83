/// A group pattern of a wildcard role (`webpubsub.sendToGroups.{pattern}`,
/// `webpubsub.joinLeaveGroups.{pattern}`), as the service reads it: `*` matches within one
/// dot-separated segment, `**` across segments, `?` one character other than a dot; `\` escapes
/// `*`, `?` and `\`. Case-sensitive. A pattern is at most 1,024 characters with at most five
/// `*` characters and five wildcards in all, so that matching stays cheap whatever a token holds.
package struct GroupPattern: Sendable, Equatable, CustomStringConvertible {
    enum Token: Equatable {
        case literal([Unicode.Scalar])
        /// Any run of characters other than a dot (`*`).
        case segment
        /// Any run of characters (`**`).
        case any
        /// One character other than a dot (`?`).
        case one
    }

    package static let maxLength = 1024
    /// `*` characters (`**` counts two), and wildcards (`*`, `**`, `?`), at most.
    package static let maxStars = 5
    package static let maxWildcards = 5

    let tokens: [Token]
    package let description: String

    /// `text` as a pattern that matches it alone: `\`, `*` and `?` escaped. For values filled
    /// into a wildcard role, so that a value cannot widen it.
    package static func escape(_ text: String) -> String {
        var out = ""
        for c in text.unicodeScalars {
            if c == "\\" || c == "*" || c == "?" { out.unicodeScalars.append("\\") }
            out.unicodeScalars.append(c)
        }
        return out
    }

    /// Why `text` is not a pattern, or nil.
    package static func problem(_ text: String) -> String? {
        switch parse(text) {
        case .success: nil
        case .failure(let problem): problem.message
        }
    }

    package init?(_ text: String) {
        guard case .success(let tokens) = Self.parse(text) else { return nil }
        self.tokens = tokens
        self.description = text
    }

    struct Problem: Error {
        let message: String
    }

    static func parse(_ text: String) -> Result<[Token], Problem> {
        guard !text.isEmpty else { return .failure(Problem(message: "a group pattern must not be empty")) }
        guard text.unicodeScalars.count <= maxLength else {
            return .failure(Problem(message: "a group pattern is at most \(maxLength) characters"))
        }
        var tokens: [Token] = []
        var literal: [Unicode.Scalar] = []
        var stars = 0
        var wildcards = 0
        func flush() {
            if !literal.isEmpty { tokens.append(.literal(literal)) }
            literal = []
        }
        var scalars = text.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = nil
        func next() -> Unicode.Scalar? {
            if let p = pending {
                pending = nil
                return p
            }
            return scalars.next()
        }
        while let c = next() {
            switch c {
            case "\\":
                guard let escaped = next(), escaped == "*" || escaped == "?" || escaped == "\\" else {
                    return .failure(Problem(message: "in a group pattern, \\ escapes only *, ? or \\"))
                }
                literal.append(escaped)
            case "*":
                flush()
                stars += 1
                wildcards += 1
                if let following = next() {
                    if following == "*" {
                        stars += 1
                        tokens.append(.any)
                    } else {
                        tokens.append(.segment)
                        pending = following
                    }
                } else {
                    tokens.append(.segment)
                }
            case "?":
                flush()
                wildcards += 1
                tokens.append(.one)
            default:
                literal.append(c)
            }
        }
        flush()
        guard stars <= maxStars, wildcards <= maxWildcards else {
            return .failure(
                Problem(message: "a group pattern has at most \(maxStars) * characters and \(maxWildcards) wildcards (*, **, ?) in all"))
        }
        return .success(tokens)
    }

    /// Whether `group` matches. Tokens against positions, one pass per token; a literal run costs
    /// its length at each reachable position. Group names are at most 1,024 UTF-16 units
    /// (``WebPubSubNames/groupProblem(_:)``), so a check stays small whatever the pattern.
    package func matches(_ group: String) -> Bool {
        let s = Array(group.unicodeScalars)
        // reachable[i]: the tokens so far can end at position i.
        var reachable = [Bool](repeating: false, count: s.count + 1)
        reachable[0] = true
        for token in tokens {
            var next = [Bool](repeating: false, count: s.count + 1)
            switch token {
            case .literal(let run):
                for i in 0...s.count where reachable[i] && i + run.count <= s.count && s[i..<(i + run.count)].elementsEqual(run) {
                    next[i + run.count] = true
                }
            case .one:
                for i in 0..<s.count where reachable[i] && s[i] != "." { next[i + 1] = true }
            case .segment:
                // One pass: from a reachable position on, every position up to the next dot.
                var active = false
                for i in 0...s.count {
                    if reachable[i] { active = true }
                    if active { next[i] = true }
                    if i < s.count, s[i] == "." { active = false }
                }
            case .any:
                if let first = reachable.firstIndex(of: true) {
                    for j in first...s.count { next[j] = true }
                }
            }
            reachable = next
        }
        return reachable[s.count]
    }
}
