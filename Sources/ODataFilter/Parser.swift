enum Token: Equatable {
    case string(String)
    case number(Double)
    case word(String)  // identifiers, keywords, function names
    case openParen, closeParen, comma
    case end
}

struct Lexer {
    let chars: [Character]
    var index = 0

    init(_ text: String) { chars = Array(text) }

    static func isWordStart(_ c: Character) -> Bool { c.isLetter || c == "_" || c == "@" || c == "$" }
    static func isWordPart(_ c: Character) -> Bool {
        c.isLetter || c.isNumber || c == "_" || c == "." || c == "-" || c == "/" || c == "@" || c == "$"
    }

    mutating func next() throws(FilterSyntaxError) -> (Token, Int) {
        while index < chars.count, chars[index].isWhitespace { index += 1 }
        let start = index
        guard index < chars.count else { return (.end, start) }
        let c = chars[index]
        switch c {
        case "(":
            index += 1
            return (.openParen, start)
        case ")":
            index += 1
            return (.closeParen, start)
        case ",":
            index += 1
            return (.comma, start)
        case "'":
            index += 1
            var value = ""
            while true {
                guard index < chars.count else {
                    throw FilterSyntaxError(position: start, message: "unterminated string literal")
                }
                let ch = chars[index]
                index += 1
                if ch == "'" {
                    if index < chars.count, chars[index] == "'" {
                        value.append("'")
                        index += 1
                    } else {
                        break
                    }
                } else {
                    value.append(ch)
                }
            }
            return (.string(value), start)
        default:
            if c.isNumber || ((c == "-" || c == "+") && index + 1 < chars.count && chars[index + 1].isNumber) {
                index += 1
                while index < chars.count, chars[index].isNumber || chars[index] == "." { index += 1 }
                let text = String(chars[start..<index])
                guard let value = Double(text) else {
                    throw FilterSyntaxError(position: start, message: "invalid number '\(text)'")
                }
                return (.number(value), start)
            }
            if Self.isWordStart(c) {
                index += 1
                while index < chars.count, Self.isWordPart(chars[index]) { index += 1 }
                return (.word(String(chars[start..<index])), start)
            }
            throw FilterSyntaxError(position: start, message: "unexpected character '\(c)'")
        }
    }
}

struct Parser {
    var lexer: Lexer
    var current: Token = .end
    var position = 0
    /// Nesting of parentheses and calls, bounded so that no filter exhausts the stack.
    var depth = 0
    static let maxDepth = 64
    /// `and`/`or` operators; the service takes about 100 clauses.
    var operators = 0
    static let maxOperators = 1000

    mutating func countOperator() throws(FilterSyntaxError) {
        operators += 1
        guard operators <= Self.maxOperators else {
            throw FilterSyntaxError(position: position, message: "the filter has more than \(Self.maxOperators) 'and'/'or' clauses")
        }
    }

    init(text: String) { lexer = Lexer(text) }

    mutating func advance() throws(FilterSyntaxError) {
        (current, position) = try lexer.next()
    }

    mutating func parseTop() throws(FilterSyntaxError) -> FilterExpression {
        try advance()
        if current == .end { throw FilterSyntaxError(position: 0, message: "empty filter") }
        let e = try parseOr()
        guard current == .end else {
            throw FilterSyntaxError(position: position, message: "unexpected \(describe(current))")
        }
        return e
    }

    func isKeyword(_ k: String) -> Bool {
        if case .word(let w) = current { return w.lowercased() == k }
        return false
    }

    func describe(_ t: Token) -> String {
        switch t {
        case .string(let s): "'\(s)'"
        case .number(let n): "\(n)"
        case .word(let w): "'\(w)'"
        case .openParen: "'('"
        case .closeParen: "')'"
        case .comma: "','"
        case .end: "end of filter"
        }
    }

    mutating func parseOr() throws(FilterSyntaxError) -> FilterExpression {
        var left = try parseAnd()
        while isKeyword("or") {
            try countOperator()
            try advance()
            left = .or(left, try parseAnd())
        }
        return left
    }

    mutating func parseAnd() throws(FilterSyntaxError) -> FilterExpression {
        var left = try parseNot()
        while isKeyword("and") {
            try countOperator()
            try advance()
            left = .and(left, try parseNot())
        }
        return left
    }

    mutating func parseNot() throws(FilterSyntaxError) -> FilterExpression {
        if isKeyword("not") {
            let start = position
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maxDepth else { throw FilterSyntaxError(position: start, message: "the filter is nested too deeply") }
            try advance()
            // `not` binds tighter than comparisons: `not length(x) gt 5` applies `not` to
            // `length(x)`. `not not x` is OData too (notExpr takes a boolCommonExpr).
            let operand = isKeyword("not") ? try parseNot() : try parsePrimary()
            return try parseComparisonTail(.not(operand))
        }
        return try parseComparison()
    }

    mutating func parseComparison() throws(FilterSyntaxError) -> FilterExpression {
        let left = try parsePrimary()
        return try parseComparisonTail(left)
    }

    mutating func parseComparisonTail(_ left: FilterExpression) throws(FilterSyntaxError) -> FilterExpression {
        if case .word(let w) = current, let op = ComparisonOperator(rawValue: w.lowercased()) {
            try advance()
            let right = try parsePrimary()
            return .compare(op, left, right)
        }
        if isKeyword("in") {
            try advance()
            if current == .openParen {
                try advance()
                var items: [FilterExpression] = []
                if current != .closeParen {
                    items.append(try parseOr())
                    while current == .comma {
                        try advance()
                        items.append(try parseOr())
                    }
                }
                guard current == .closeParen else {
                    throw FilterSyntaxError(position: position, message: "expected ')' to close the 'in' list, found \(describe(current))")
                }
                try advance()
                if items.isEmpty { throw FilterSyntaxError(position: position, message: "empty 'in' list") }
                return .inList(left, items)
            }
            let right = try parsePrimary()
            return .inCollection(left, right)
        }
        return left
    }

    mutating func parsePrimary() throws(FilterSyntaxError) -> FilterExpression {
        let start = position
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw FilterSyntaxError(position: start, message: "the filter is nested too deeply") }
        switch current {
        case .string(let s):
            try advance()
            return .literal(.string(s))
        case .number(let n):
            try advance()
            return .literal(.number(n))
        case .openParen:
            try advance()
            let inner = try parseOr()
            guard current == .closeParen else {
                throw FilterSyntaxError(position: position, message: "expected ')', found \(describe(current))")
            }
            try advance()
            return inner
        case .word(let w):
            let lower = w.lowercased()
            switch lower {
            case "true", "false":
                try advance()
                return .literal(.bool(lower == "true"))
            case "null":
                try advance()
                return .literal(.null)
            case "and", "or", "not", "in", "eq", "ne", "gt", "ge", "lt", "le":
                throw FilterSyntaxError(position: start, message: "expected a value, found keyword '\(w)'")
            default:
                break
            }
            try advance()
            if current == .openParen {
                guard let function = FilterFunction(rawValue: lower) else {
                    throw FilterSyntaxError(position: start, message: "unknown function '\(w)'")
                }
                try advance()
                var args: [FilterExpression] = []
                if current != .closeParen {
                    args.append(try parseOr())
                    while current == .comma {
                        try advance()
                        args.append(try parseOr())
                    }
                }
                guard current == .closeParen else {
                    throw FilterSyntaxError(position: position, message: "expected ')' after the arguments of '\(w)', found \(describe(current))")
                }
                try advance()
                guard function.arity.contains(args.count) else {
                    throw FilterSyntaxError(
                        position: start,
                        message:
                            "'\(w)' takes \(function.arity.lowerBound == function.arity.upperBound ? "\(function.arity.lowerBound)" : "\(function.arity.lowerBound) or \(function.arity.upperBound)") arguments, got \(args.count)"
                    )
                }
                return .call(function, args)
            }
            return .identifier(w)
        case .closeParen, .comma, .end:
            throw FilterSyntaxError(position: start, message: "expected a value, found \(describe(current))")
        }
    }
}
