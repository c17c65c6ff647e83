import ArgumentParser  // a conformance of swift-log's Logger.Level is public whatever we write
import AzureIdentity
import BridgeApp
import BridgeConfig
import BridgeCore
import BridgeCrypto
import BridgeObservability
import CMalloc
import Foundation
import KafkaAdapter
import LocalHub
import Logging
import NIOCore
import RedisAdapter
import ServiceLifecycle
import Synchronization
import UnixSignals
import WebPubSub
import WebPubSubProtocol

@main
struct WPSBridge: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "wps-bridge",
        abstract: "Bridges Kafka, Redis and stdin to Azure Web PubSub, and client events back.",
        version: "\(version) (librdkafka \(librdkafkaVersion), \(hiredisVersion), \(openSSLVersion))",
        subcommands: [Run.self, Hub.self, Validate.self, Token.self, Send.self],
        defaultSubcommand: Run.self
    )
}

/// glibc's malloc, set up for a long-running process with many threads. Measured on the
/// benchmark's Kafka drain (200,000 messages): of 24-30 MB of anonymous memory, 6 MB was in use
/// and the rest free blocks glibc kept. Now 18.6 MB, at the same throughput:
/// - two arenas instead of up to eight per core: a thread that finds the arenas locked gets one
///   of its own, and freed memory stays in the arena it came from (librdkafka's, NIO's and the
///   concurrency pool's threads made several partly used ones);
/// - fixed mmap (128 KiB) and trim (512 KiB) thresholds: glibc's dynamic ones rise to the
///   largest block ever freed (librdkafka's fetch buffers), after which that much free memory
///   stays in the heap.
/// The `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` environment
/// variables still decide where they are set.
func tuneMalloc() {
    let environment = ProcessInfo.processInfo.environment
    if environment["MALLOC_ARENA_MAX"] == nil { _ = wps_malloc_arena_max(2) }
    if environment["MALLOC_MMAP_THRESHOLD_"] == nil { _ = wps_malloc_mmap_threshold(128 * 1024) }
    if environment["MALLOC_TRIM_THRESHOLD_"] == nil { _ = wps_malloc_trim_threshold(512 * 1024) }
}

/// A server holds a file descriptor per connection: the soft limit (1,024 in a new Debian shell)
/// is raised to the hard one, as most servers do; `maxConnections` is the cap that matters.
func raiseOpenFileLimit() {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

/// Fails with OpenSSL's own reason when the system's libcrypto cannot compute HMAC-SHA256 (a
/// broken install, or a provider configuration without SHA-256): at start, not at the first send.
func checkLibcrypto() throws {
    do {
        try HMACSHA256.selfTest()
    } catch {
        throw ValidationError("the system's libcrypto (\(openSSLVersion)) cannot be used: \(error)")
    }
}

/// A secret given on the command line is visible to every user of the machine (`ps`, /proc) and
/// stays in shell history: it still works, with a warning.
func warnSecretOnCommandLine(_ option: String, instead: String, logger: Logger) {
    logger.warning("\(option) puts a secret on the command line, where ps and shell history show it; use \(instead)")
}

/// The first line of a secret file, without surrounding white space.
func readSecretFile(_ path: String, option: String) throws -> String {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw ValidationError("\(option): cannot read \(path): \(error.localizedDescription)")
    }
    let secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
    guard !secret.isEmpty else { throw ValidationError("\(option): \(path) is empty") }
    return secret
}

/// SIGTERM or SIGINT starts a graceful shutdown (the service group's business); a second one
/// while it runs exits at once, for an operator who does not want to wait for the drain.
final class SecondSignal {
    private final class Count: Sendable {
        let value = Atomic<Int>(0)
    }

    private let sources: [any DispatchSourceSignal]

    init(logger: Logger) {
        let count = Count()
        sources = [SIGTERM, SIGINT].map { number in
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                // Signals that arrive together are merged into one event: `data` counts them.
                if count.value.add(max(1, Int(source.data)), ordering: .relaxed).newValue >= 2 {
                    logger.warning(
                        "second signal: exiting without waiting for in-flight sends (they are read again on restart where the source allows)")
                    exit(130)
                }
            }
            source.resume()
            return source
        }
    }

    func cancel() {
        for source in sources { source.cancel() }
    }
}
