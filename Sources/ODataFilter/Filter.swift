/// OData filter expressions as Azure Web PubSub accepts them in its `filter` query parameter
/// (`userId eq 'a' and not ('g1' in groups)`), parsed once and evaluated many times.
///
/// The grammar: `or` < `and` < `not` < comparisons (`eq ne gt ge lt le`, `in`) < primaries
/// (literals `'text'` with `''` escaping, numbers, `true`, `false`, `null`; identifiers; function
/// calls; parenthesised expressions and lists). Identifiers are whatever the caller resolves:
/// the hub resolves `userId`, `connectionId` and `groups`; route conditions resolve `key`,
/// `header.NAME`, `json.a.b`, `topic` and so on. Identifiers compare case-insensitively at the
/// caller's choice through ``Filter/identifiers``.
package struct Filter: Sendable, CustomStringConvertible {
    /// The parsed expression.
    package let expression: FilterExpression
    /// The text the filter was parsed from.
    package let text: String

    /// Parses `text`.
    /// - Throws: ``FilterSyntaxError`` naming the position and the problem.
    package init(_ text: String) throws(FilterSyntaxError) {
        var parser = Parser(text: text)
        let expression = try parser.parseTop()
        try TypeCheck.requireBoolean(expression, text: text)
        self.expression = expression
        self.text = text
    }

    /// Every identifier the expression reads, as written.
    package var identifiers: Set<String> { expression.identifiers }

    /// Evaluates the filter; identifiers are looked up through `resolve`.
    package func matches(_ resolve: (String) -> FilterValue) -> Bool {
        expression.evaluate(resolve) == .bool(true)
    }

    package var description: String { text }
}

/// A value during evaluation.
package enum FilterValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case collection([String])

    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "bool"
        case .number: "number"
        case .string: "string"
        case .collection: "collection"
        }
    }
}

/// Why a filter did not parse.
package struct FilterSyntaxError: Error, Sendable, CustomStringConvertible {
    /// Offset (in characters) where the problem was found.
    package let position: Int
    package let message: String

    package var description: String { "\(message) (at offset \(position))" }
}

package enum ComparisonOperator: String, Sendable {
    case eq, ne, gt, ge, lt, le
}

package enum FilterFunction: String, Sendable, CaseIterable {
    case tolower, toupper, trim, substring, concat, startswith, endswith, contains, indexof, length

    var arity: ClosedRange<Int> {
        switch self {
        case .tolower, .toupper, .trim, .length: 1...1
        case .substring: 2...3
        case .concat, .startswith, .endswith, .contains, .indexof: 2...2
        }
    }

    var returnsBoolean: Bool {
        switch self {
        case .startswith, .endswith, .contains: true
        default: false
        }
    }
}

/// The syntax tree of a filter.
package indirect enum FilterExpression: Sendable {
    case literal(FilterValue)
    case identifier(String)
    case not(FilterExpression)
    case and(FilterExpression, FilterExpression)
    case or(FilterExpression, FilterExpression)
    case compare(ComparisonOperator, FilterExpression, FilterExpression)
    /// `x in ('a', 'b')`
    case inList(FilterExpression, [FilterExpression])
    /// `'g' in groups`
    case inCollection(FilterExpression, FilterExpression)
    case call(FilterFunction, [FilterExpression])

    var identifiers: Set<String> {
        switch self {
        case .literal: []
        case .identifier(let name): [name]
        case .not(let e): e.identifiers
        case .and(let a, let b), .or(let a, let b), .compare(_, let a, let b), .inCollection(let a, let b):
            a.identifiers.union(b.identifiers)
        case .inList(let a, let list): list.reduce(a.identifiers) { $0.union($1.identifiers) }
        case .call(_, let args): args.reduce(into: Set<String>()) { $0.formUnion($1.identifiers) }
        }
    }

    func evaluate(_ resolve: (String) -> FilterValue) -> FilterValue {
        switch self {
        case .literal(let value):
            return value
        case .identifier(let name):
            return resolve(name)
        case .not(let e):
            if case .bool(let b) = e.evaluate(resolve) { return .bool(!b) }
            return .bool(false)
        case .and(let a, let b):
            guard a.evaluate(resolve) == .bool(true) else { return .bool(false) }
            return .bool(b.evaluate(resolve) == .bool(true))
        case .or(let a, let b):
            if a.evaluate(resolve) == .bool(true) { return .bool(true) }
            return .bool(b.evaluate(resolve) == .bool(true))
        case .compare(let op, let a, let b):
            return .bool(Self.compare(op, a.evaluate(resolve), b.evaluate(resolve)))
        case .inList(let a, let list):
            let value = a.evaluate(resolve)
            return .bool(list.contains { Self.compare(.eq, value, $0.evaluate(resolve)) })
        case .inCollection(let a, let collection):
            let value = a.evaluate(resolve)
            switch collection.evaluate(resolve) {
            case .collection(let items):
                guard case .string(let s) = value else { return .bool(false) }
                return .bool(items.contains(s))
            case .string(let s):
                // A single value where a collection was expected: membership is equality.
                return .bool(value == .string(s))
            default:
                return .bool(false)
            }
        case .call(let function, let args):
            return Self.call(function, args.map { $0.evaluate(resolve) })
        }
    }

    static func compare(_ op: ComparisonOperator, _ a: FilterValue, _ b: FilterValue) -> Bool {
        switch (a, b) {
        case (.number(let x), .number(let y)):
            switch op {
            case .eq: return x == y
            case .ne: return x != y
            case .gt: return x > y
            case .ge: return x >= y
            case .lt: return x < y
            case .le: return x <= y
            }
        case (.string(let x), .string(let y)):
            // Ordinal comparison, as the service does.
            let xs = Array(x.unicodeScalars.map(\.value))
            let ys = Array(y.unicodeScalars.map(\.value))
            switch op {
            case .eq: return xs == ys
            case .ne: return xs != ys
            case .gt: return ys.lexicographicallyPrecedes(xs)
            case .ge: return !xs.lexicographicallyPrecedes(ys)
            case .lt: return xs.lexicographicallyPrecedes(ys)
            case .le: return !ys.lexicographicallyPrecedes(xs)
            }
        default:
            switch op {
            case .eq: return a == b
            case .ne: return a != b
            default: return false
            }
        }
    }

    static func call(_ function: FilterFunction, _ args: [FilterValue]) -> FilterValue {
        func string(_ i: Int) -> String? {
            guard i < args.count, case .string(let s) = args[i] else { return nil }
            return s
        }
        func int(_ i: Int) -> Int? {
            guard i < args.count, case .number(let n) = args[i], n.rounded() == n, abs(n) < 1e15 else { return nil }
            return Int(n)
        }
        switch function {
        case .tolower: return string(0).map { .string($0.lowercased()) } ?? .null
        case .toupper: return string(0).map { .string($0.uppercased()) } ?? .null
        case .trim:
            return string(0).map { .string(String($0.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())) } ?? .null
        case .length:
            if case .collection(let items) = args.first { return .number(Double(items.count)) }
            return string(0).map { .number(Double($0.count)) } ?? .null
        case .concat:
            guard let a = string(0), let b = string(1) else { return .null }
            return .string(a + b)
        case .startswith:
            guard let a = string(0), let b = string(1) else { return .bool(false) }
            return .bool(a.hasPrefix(b))
        case .endswith:
            guard let a = string(0), let b = string(1) else { return .bool(false) }
            return .bool(a.hasSuffix(b))
        case .contains:
            guard let a = string(0), let b = string(1) else { return .bool(false) }
            return .bool(b.isEmpty || a.firstRange(of: b) != nil)
        case .indexof:
            guard let a = string(0), let b = string(1) else { return .null }
            guard let range = a.firstRange(of: b) else { return .number(b.isEmpty ? 0 : -1) }
            return .number(Double(a.distance(from: a.startIndex, to: range.lowerBound)))
        case .substring:
            guard let s = string(0), let start = int(1), start >= 0 else { return .null }
            let chars = Array(s)
            guard start <= chars.count else { return .string("") }
            if args.count > 2 {
                guard let length = int(2), length >= 0 else { return .null }
                return .string(String(chars[start..<min(chars.count, start + length)]))
            }
            return .string(String(chars[start...]))
        }
    }
}

/// Static checks that can be made without knowing identifier values: `not`, `and` and `or` take
/// booleans, and the whole filter is boolean.
enum TypeCheck {
    enum Kind {
        case boolean
        /// Not a boolean: what it is instead, for the message.
        case nonBoolean(String)
        case unknown
    }

    static func kind(of e: FilterExpression) -> Kind {
        switch e {
        case .literal(.bool): .boolean
        case .literal(let v): .nonBoolean(v.typeName)
        case .identifier: .unknown
        case .not, .and, .or, .compare, .inList, .inCollection: .boolean
        case .call(let f, _): f.returnsBoolean ? .boolean : .nonBoolean(f == .length || f == .indexof ? "number" : "string")
        }
    }

    static func requireBoolean(_ e: FilterExpression, text: String) throws(FilterSyntaxError) {
        if case .nonBoolean(let type) = kind(of: e) {
            throw FilterSyntaxError(position: 0, message: "Invalid syntax for '\(text)': type '\(type)', expected 'bool'")
        }
        try checkOperands(e)
    }

    /// Walks the tree: every operand of `not`, `and` and `or` must be boolean.
    static func checkOperands(_ e: FilterExpression) throws(FilterSyntaxError) {
        func check(_ operand: FilterExpression, in context: FilterExpression) throws(FilterSyntaxError) {
            if case .nonBoolean(let type) = kind(of: operand) {
                throw FilterSyntaxError(position: 0, message: "Invalid syntax for '\(render(context))': type '\(type)', expected 'bool'")
            }
        }
        switch e {
        case .literal, .identifier:
            return
        case .not(let x):
            try check(x, in: e)
            try checkOperands(x)
        case .and(let a, let b), .or(let a, let b):
            try check(a, in: e)
            try check(b, in: e)
            try checkOperands(a)
            try checkOperands(b)
        case .compare(_, let a, let b), .inCollection(let a, let b):
            try checkOperands(a)
            try checkOperands(b)
        case .inList(let a, let items):
            try checkOperands(a)
            for item in items { try checkOperands(item) }
        case .call(_, let args):
            for arg in args { try checkOperands(arg) }
        }
    }

    static func render(_ e: FilterExpression) -> String {
        switch e {
        case .literal(.string(let s)): "'\(s.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "''"))'"
        case .literal(.number(let n)): n.rounded() == n && abs(n) < 1e15 ? String(Int(n)) : String(n)
        case .literal(.bool(let b)): String(b)
        case .literal(.null): "null"
        case .literal(.collection(let items)): "(\(items.joined(separator: ",")))"
        case .identifier(let name): name
        case .not(let x): "not \(render(x))"
        case .and(let a, let b): "\(render(a)) and \(render(b))"
        case .or(let a, let b): "\(render(a)) or \(render(b))"
        case .compare(let op, let a, let b): "\(render(a)) \(op.rawValue) \(render(b))"
        case .inList(let a, let list): "\(render(a)) in (\(list.map(render).joined(separator: ", ")))"
        case .inCollection(let a, let b): "\(render(a)) in \(render(b))"
        case .call(let f, let args): "\(f.rawValue)(\(args.map(render).joined(separator: ", ")))"
        }
    }
}
