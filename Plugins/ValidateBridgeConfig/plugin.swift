import Foundation
import PackagePlugin

/// `swift package validate-config [--config FILE | FILE]`: checks a bridge config with
/// `wps-bridge validate` (every problem with its line), from any checkout. FILE defaults to
/// bridge.yaml, then bridge.yaml.example.
///
/// The plugin declares no dependency on the `wps-bridge` target: it asks SwiftPM to build the
/// product when it runs. A plugin dependency on an executable makes SwiftPM compile a host-tool
/// copy of the executable and everything below it on every `swift build`, which doubled the cold
/// build.
@main
struct ValidateBridgeConfig: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        var extractor = ArgumentExtractor(arguments)
        let option = extractor.extractOption(named: "config").last
        let file = option ?? extractor.remainingArguments.first ?? defaultFile(in: context.package.directoryURL)

        let build = try packageManager.build(.product("wps-bridge"), parameters: .init(configuration: .debug, logging: .concise))
        guard build.succeeded else {
            Diagnostics.error("building wps-bridge failed:\n\(build.logText)")
            return
        }
        guard let tool = build.builtArtifacts.first(where: { $0.kind == .executable && $0.url.lastPathComponent == "wps-bridge" }) else {
            Diagnostics.error("the build gave no wps-bridge executable (built: \(build.builtArtifacts.map(\.url.path)))")
            return
        }
        let process = Process()
        process.executableURL = tool.url
        process.arguments = ["validate", "--config", file]
        try process.run()
        process.waitUntilExit()
        if process.terminationStatus != 0 {
            Diagnostics.error("\(file) is not a valid bridge config")
        }
    }

    func defaultFile(in directory: URL) -> String {
        let yaml = directory.appendingPathComponent("bridge.yaml").path
        return FileManager.default.fileExists(atPath: yaml) ? yaml : directory.appendingPathComponent("bridge.yaml.example").path
    }
}
