//! The `pixbox` binary: parse the command line, load the configuration, start. Nothing else.

use clap::Parser;
use pixbox::cli::{Cli, Command, PluginCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = if let Command::Keys { command } = &cli.command { pixbox::cli::keys(command) } else { run(&cli) };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    cli.config().and_then(|config| {
        pixbox::telemetry::init_tracing(&config);
        match &cli.command {
            Command::Serve { .. } => pixbox::cli::serve(config),
            Command::Transform { plugin, options, key, input, output } => {
                pixbox::cli::transform(&config, plugin.as_deref(), options, key, input, output)
            }
            Command::Plugin { command: PluginCommand::Info { plugin } } => pixbox::cli::plugin_info(&config, plugin),
            Command::Keys { command } => pixbox::cli::keys(command),
            Command::Jobs { command } => pixbox::cli::jobs(&config, command),
            Command::Health { ready } => pixbox::cli::health(&config, *ready),
        }
    })
}
