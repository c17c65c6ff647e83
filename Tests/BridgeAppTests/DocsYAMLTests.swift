import BridgeConfig
import BridgeCore
import Foundation
import Testing
import Yams

@testable import BridgeApp

/// Every ```yaml block in the README and docs/ goes through the config parser, so the docs
/// cannot drift from the code. A block is one of:
/// - a complete config (it has `webpubsub:` and `sources:` or `events:`);
/// - a list of sources, put under `sources:`;
/// - some top-level keys, merged over a small working config.
/// Sources get a route each; `${VAR}` references get a value; files under /run/secrets/ are
/// stood in for. Other YAML (Kubernetes, compose) is fenced ```yml and not read.
@Suite struct DocsYAMLTests {
    struct Block: CustomStringConvertible {
        let file: String
        let line: Int
        let text: String
        var description: String { "\(file):\(line)" }
    }

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func blocks() throws -> [Block] {
        let docs = root.appendingPathComponent("docs")
        let pages = try FileManager.default.contentsOfDirectory(atPath: docs.path).filter { $0.hasSuffix(".md") }.sorted()
        var found: [Block] = []
        for relative in ["README.md"] + pages.map({ "docs/\($0)" }) {
            let lines = try String(contentsOf: root.appendingPathComponent(relative), encoding: .utf8).components(separatedBy: "\n")
            var start: Int?
            for (i, line) in lines.enumerated() {
                if start == nil, line.trimmingCharacters(in: .whitespaces) == "```yaml" {
                    start = i + 1
                } else if let s = start, line.trimmingCharacters(in: .whitespaces) == "```" {
                    found.append(Block(file: relative, line: s + 1, text: lines[s..<i].joined(separator: "\n")))
                    start = nil
                }
            }
            #expect(start == nil, "\(relative): a ```yaml block is not closed")
        }
        return found
    }

    static let base = """
        webpubsub:
          embedded: {host: 127.0.0.1, port: 0, accessKey: docs-test-key-0123456789abcdef0123456789}
          hub: chat
        sources:
          - {name: docs-in, type: stdin}
        routes:
          - {name: docs-route, from: docs-in, to: [{group: g}]}
        deadLetter: {type: stdout}
        """

    /// The config a block stands for, as YAML text.
    static func config(for block: Block) throws -> String {
        let node = try #require(try Yams.compose(yaml: block.text), "\(block): not YAML")
        let baseNode = try #require(try Yams.compose(yaml: base))
        var root: Node.Mapping
        var sources: Node.Sequence?
        switch node {
        case .sequence(let list):
            root = try #require(baseNode.mapping)
            root["sources"] = .sequence(list)
            sources = list
        case .mapping(let given):
            let complete = given["webpubsub"] != nil && (given["sources"] != nil || given["events"] != nil)
            root = complete ? given : try #require(baseNode.mapping)
            if !complete {
                for (key, value) in given { root[key] = value }
            }
            if given["routes"] == nil { sources = given["sources"]?.sequence }
        case .scalar, .alias:
            Issue.record("\(block): neither a list of sources nor a mapping")
            return ""
        }
        if let sources {
            // A route from each source, so that none is left unused.
            let names = sources.compactMap { $0.mapping?["name"]?.string }
            root["routes"] = .sequence(
                Node.Sequence(
                    names.map { name in
                        Node.mapping(["name": Node("docs-\(name)"), "from": Node(name), "to": Node.sequence([Node.mapping(["group": "g"])])])
                    }))
        }
        return try Yams.serialize(node: .mapping(root))
    }

    @Test func everyYAMLBlockInTheDocsIsAValidConfig() throws {
        let blocks = try Self.blocks()
        // The docs hold a dozen or so; none found means the reader is broken, not the docs fine.
        #expect(blocks.count >= 8, "\(blocks.count) blocks")
        let secrets = FileManager.default.temporaryDirectory.appendingPathComponent("docs-yaml-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: secrets, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: secrets) }
        for block in blocks {
            var text = try Self.config(for: block)
            // Secret files: stood in for by files of the same name.
            for match in text.matches(of: /\/run\/secrets\/([A-Za-z0-9_.-]+)/) {
                try "docs-test-secret".write(to: secrets.appendingPathComponent(String(match.1)), atomically: true, encoding: .utf8)
            }
            text = text.replacingOccurrences(of: "/run/secrets/", with: secrets.path + "/")
            // Every ${VAR} gets a value long enough for a key or token.
            var env: [String: String] = [:]
            for match in text.matches(of: /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/) { env[String(match.1)] = "docs-test-value-0123456789abcdef0123456789" }
            do {
                _ = try BridgeConfiguration.parse(yaml: text, file: block.description, baseDirectory: secrets.path, environment: env, logger: quiet)
            } catch {
                Issue.record("\(block) is not a valid config:\n\(error)\n--- as read:\n\(text)")
            }
        }
    }

    /// The checker itself: a block with a key the bridge does not know fails.
    @Test func aBlockWithAnUnknownKeyIsRefused() throws {
        let block = Block(file: "test", line: 1, text: "server:\n  listn: 0.0.0.0:8081\n")
        #expect(throws: ConfigError.self) {
            _ = try BridgeConfiguration.parse(yaml: try Self.config(for: block), environment: [:], logger: quiet)
        }
        let sources = Block(file: "test", line: 1, text: "- {name: k, type: kafka, brokers: [b:9092], topics: [t], grup: g}\n")
        #expect(throws: ConfigError.self) {
            _ = try BridgeConfiguration.parse(yaml: try Self.config(for: sources), environment: [:], logger: quiet)
        }
    }
}
