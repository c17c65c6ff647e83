import BridgeConfig
import BridgeCore
import BridgeTestSupport
import Foundation
import Logging
import NIOCore
import Testing

@testable import KafkaAdapter

let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

/// Reads one sink or source mapping with its factory; returns the adapter and the problems.
func readSink(_ yaml: String) -> ((any SinkAdapter)?, [String]) {
    let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
    guard let root = reader.root(yaml: yaml) else { return (nil, reader.issues.map(\.description)) }
    let sink = KafkaSinkFactory().makeSink(settings: root, context: AdapterContext(logger: quiet, environment: [:]))
    return (sink, reader.issues.map(\.description))
}

func readSource(_ yaml: String) -> ((any SourceAdapter)?, [String]) {
    let reader = ConfigReader(environment: [:], baseDirectory: "/tmp")
    guard let root = reader.root(yaml: yaml) else { return (nil, reader.issues.map(\.description)) }
    let source = KafkaSourceFactory().makeSource(name: "k", settings: root, context: AdapterContext(logger: quiet, environment: [:]))
    return (source, reader.issues.map(\.description))
}

@Suite struct KafkaConfigTests {
    @Test func sourceMistakesAreReportedWithTheirLines() {
        let (source, issues) = readSource(
            """
            brokers: ""
            topic: x
            startFrom: beginning
            librdkafka:
              session.timeout.ms: soon
              group.id: other
              no.such.property: 1
            """)
        #expect(source == nil)
        let text = issues.joined(separator: "\n")
        #expect(text.contains("brokers must be host:port"))
        #expect(text.contains("unknown key 'topic'") && text.contains("did you mean 'topics'"))
        #expect(text.contains("missing required key 'group'"))
        #expect(text.contains("'beginning' is not one of: earliest, latest"))
        #expect(text.contains("'group.id' is set by the bridge"))
        #expect(issues.count >= 6, "\(text)")
    }

    @Test func aTopicListedTwiceIsAMistake() {
        let (source, issues) = readSource("brokers: a:1\ntopics: [t, t]\ngroup: g\n")
        _ = source
        #expect(issues.joined().contains("listed twice"), "\(issues)")
    }

    @Test func librdkafkaRefusalsAreConfigProblems() {
        let (source, issues) = readSource(
            """
            brokers: [a:9092, "b:9092,c:9092"]
            topics: [t, "^events\\\\..*"]
            group: g
            librdkafka:
              session.timeout.ms: soon
              no.such.property: 1
            """)
        let text = issues.joined(separator: "\n")
        #expect(text.contains("librdkafka: session.timeout.ms:"), "\(text)")
        #expect(text.contains("no.such.property:") && text.contains("No such configuration property"), "\(text)")
        #expect(source != nil)
    }

    @Test func aGoodSourceKeepsItsSettings() throws {
        let (source, issues) = readSource(
            """
            brokers: [a:9092, "b:9092,c:9092"]
            topics: t
            group: g
            startFrom: earliest
            commitInterval: 250ms
            librdkafka:
              security.protocol: plaintext
            """)
        #expect(issues.isEmpty, "\(issues)")
        let kafka = try #require(source as? KafkaSource)
        let properties = Dictionary(kafka.settings.properties, uniquingKeysWith: { $1 })
        #expect(properties["bootstrap.servers"] == "a:9092,b:9092,c:9092")
        #expect(properties["auto.offset.reset"] == "earliest")
        #expect(properties["enable.auto.commit"] == "false")
        #expect(properties["security.protocol"] == "plaintext")
        #expect(kafka.settings.commitInterval == .milliseconds(250))
    }

    @Test func sinkTemplatesCannotReadSourceFields() {
        let (sink, issues) = readSink("brokers: a:1\ntopic: \"dlq-{topic}\"\n")
        #expect(sink == nil || !issues.isEmpty)
        #expect(issues.joined().contains("{topic} is not known when writing to a sink"))
    }

    @Test func valuesAreClassified() {
        #expect(PayloadType.auto.classify(Array(#"{"a":1}"#.utf8)).0 == .json)
        #expect(PayloadType.auto.classify(Array("hello".utf8)).0 == .text)
        #expect(PayloadType.auto.classify([0xff, 0x00]).0 == .binary)
        #expect(PayloadType.json.classify(Array("hello".utf8)).1 != nil)
        #expect(PayloadType.text.classify([0xff]).1 != nil)
        #expect(PayloadType.binary.classify([0xff]).1 == nil)
    }
}

@Suite(.serialized) struct KafkaSinkTests {
    @Test func recordsAreReadBackWithKeyHeadersAndTemplatedTopic() async throws {
        let broker = try await KafkaBroker()
        let (made, issues) = readSink(
            """
            brokers: \(broker.brokers)
            topic: "chat-{header.hub}"
            key: "{json.user}"
            """)
        #expect(issues.isEmpty, "\(issues)")
        let sink = try #require(made)
        for i in 0..<3 {
            try await sink.write(
                SinkRecord(
                    payload: ByteBuffer(string: #"{"user":"u\#(i)","text":"hi \#(i)"}"#), dataType: .json, key: "ignored",
                    headers: ["hub": "lobby", "ce-type": "azure.webpubsub.user.message"]))
        }
        try await sink.close()
        let records = try await KafkaTool.consume(broker.brokers, topic: "chat-lobby", count: 3)
        #expect(Set(records.map(\.key)) == ["u0", "u1", "u2"])
        for r in records {
            #expect(r.headers["ce-type"] == "azure.webpubsub.user.message")
            #expect(r.headers["wps-data-type"] == "json")
            #expect(r.value?.contains(r.key ?? "?") == true)
        }
        // Records of one key keep their order: they land on one partition.
        await broker.stop()
    }

    @Test func aWriteToABrokerThatIsDownFailsAfterTheDeliveryTimeout() async throws {
        let port = try TestEnvironment.freePort()
        let (made, _) = readSink("brokers: 127.0.0.1:\(port)\ntopic: t\ndeliveryTimeout: 1s\n")
        let sink = try #require(made)
        let started = ContinuousClock.now
        await #expect(throws: KafkaError.self) {
            try await sink.write(SinkRecord(payload: ByteBuffer(string: "x"), dataType: .text))
        }
        #expect(ContinuousClock.now - started < .seconds(20))
        // Readiness can tell why.
        #expect((sink as? KafkaSink)?.healthProblem != nil)
        try await sink.close()
    }
}
