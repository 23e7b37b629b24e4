//! The `pixbox` binary: parse the command line, load the configuration, start. Nothing else.

use clap::Parser;
use pixbox::cli::{Cli, Command, PluginCommand};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // These need no configuration (and must work in any folder, with any environment).
    let result = match &cli.command {
        Command::Keys { command } => pixbox::cli::keys(command),
        Command::Wit { version } => pixbox::author::wit(version.as_deref()),
        Command::Plugin { command: PluginCommand::New { name, dir } } => pixbox::cli::plugin_new(name, dir),
        _ => run(&cli),
    };
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
        let tool = matches!(cli.command, Command::Transform { .. } | Command::Plugin { .. });
        pixbox::telemetry::init_tracing(&config, tool);
        // Which file the settings came from, so a stray or missing one is never a surprise
        // (through the log, so JSON logs stay JSON).
        match (&config.file, &cli.command) {
            (Some(file), _) => tracing::info!("config: {}", file.display()),
            (None, Command::Serve { .. }) => tracing::info!(
                "config: no file (defaults and environment; looked for {})",
                config.data_dir.join("pixbox.toml").display()
            ),
            (None, _) => {}
        }
        match &cli.command {
            Command::Serve { .. } => pixbox::cli::serve(config),
            Command::Transform { plugin, options, key, input, output } => {
                pixbox::cli::transform(&config, plugin.as_deref(), options, key, input, output)
            }
            Command::Plugin { command: PluginCommand::Info { plugin } } => pixbox::cli::plugin_info(&config, plugin),
            Command::Plugin { command: PluginCommand::Watch { dir, samples, options } } => {
                pixbox::author::watch(&config, dir, samples.as_deref(), &pixbox::cli::parse_options(options)?)
            }
            Command::Plugin { command: PluginCommand::New { name, dir } } => pixbox::cli::plugin_new(name, dir),
            Command::Keys { command } => pixbox::cli::keys(command),
            Command::Wit { version } => pixbox::author::wit(version.as_deref()),
            Command::Jobs { command } => pixbox::cli::jobs(&config, command),
            Command::Health { ready } => pixbox::cli::health(&config, *ready),
        }
    })
}
