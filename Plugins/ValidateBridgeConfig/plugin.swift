import Foundation
import PackagePlugin

/// `swift package validate-config [FILE]`: checks a bridge config with `wps-bridge validate`
/// (every problem with its line), from any checkout. FILE defaults to bridge.yaml, then
/// bridge.yaml.example.
@main
struct ValidateBridgeConfig: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        var extractor = ArgumentExtractor(arguments)
        let option = extractor.extractOption(named: "config").last
        let file = option ?? extractor.remainingArguments.first ?? defaultFile(in: context.package.directoryURL)
        let tool = try context.tool(named: "wps-bridge")
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
