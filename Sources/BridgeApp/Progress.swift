import BridgeCore
import Foundation
import ServiceLifecycle
import Synchronization

/// The one-line summary `run` prints on a terminal every few seconds while messages move:
/// messages in (and the rate), delivered, retried, dead-lettered, in flight.
struct ProgressReporter: Service {
    let stats: DispatchStats
    let inFlight: @Sendable () -> Int
    var interval: Duration = .seconds(5)

    func run() async throws {
        // Ends with the group's graceful shutdown, like everything else.
        await cancelWhenGracefulShutdown { await report() }
    }

    private func report() async {
        var last = ContinuousClock.now
        var lastReceived = 0
        var lastLine = ""
        while true {
            do { try await Task.sleep(for: interval) } catch { return }
            let now = ContinuousClock.now
            let received = stats.received.load(ordering: .relaxed)
            let seconds = (now - last) / .seconds(1)
            let rate = seconds > 0 ? Double(received - lastReceived) / seconds : 0
            last = now
            lastReceived = received
            let line = Self.line(stats: stats, inFlight: inFlight(), rate: rate)
            // Quiet while nothing moves.
            guard line != lastLine || rate > 0 else { continue }
            lastLine = line
            writeToStandardError(line + "\n")
        }
    }

    static func line(stats: DispatchStats, inFlight: Int, rate: Double) -> String {
        let received = stats.received.load(ordering: .relaxed)
        let delivered = stats.delivered.load(ordering: .relaxed)
        let sends = stats.sends.load(ordering: .relaxed)
        let conflated = stats.conflated.load(ordering: .relaxed)
        // Batching shows as messages per send.
        var batching = ""
        if sends > 0, sends < delivered {
            batching = " in \(sends) sends (\((Double(delivered) / Double(sends)).formatted(.number.precision(.fractionLength(1)))) msg/send)"
        }
        if conflated > 0 { batching += ", \(conflated) conflated" }
        return "wps-bridge: \(received) in (\(Int(rate.rounded()))/s), \(delivered) delivered\(batching), "
            + "\(stats.retried.load(ordering: .relaxed)) retried, \(stats.deadLettered.load(ordering: .relaxed)) dead-lettered, "
            + "\(inFlight) in flight"
    }
}
