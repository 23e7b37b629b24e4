//! The `pixbox` binary: parse the command line, load the configuration, start. Nothing else.

use clap::Parser;
use pixbox::cli::{Cli, Command, PluginCommand};
use pixbox::config::Config;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        // These need no configuration (and must work in any folder, with any environment).
        Command::Keys { command } => pixbox::cli::keys(command),
        Command::Wit { version } => pixbox::author::wit(version.as_deref()),
        Command::Plugin { command: PluginCommand::New { name, dir } } => pixbox::cli::plugin_new(name, dir),
        Command::Serve { .. } => configured(&cli).and_then(pixbox::cli::serve),
        Command::Transform { plugin, preset, options, key, input, output } => configured(&cli).and_then(|config| {
            pixbox::cli::transform(&config, plugin.as_deref(), preset.as_deref(), options, key, input, output)
        }),
        Command::Plugin { command: PluginCommand::Info { plugin } } => {
            configured(&cli).and_then(|config| pixbox::cli::plugin_info(&config, plugin))
        }
        Command::Plugin { command: PluginCommand::Watch { dir, samples, options } } => {
            configured(&cli).and_then(|config| {
                pixbox::author::watch(&config, dir, samples.as_deref(), &pixbox::cli::parse_options(options)?)
            })
        }
        Command::Jobs { command } => configured(&cli).and_then(|config| pixbox::cli::jobs(&config, command)),
        Command::Images { command } => configured(&cli).and_then(|config| pixbox::cli::images(&config, command)),
        Command::Webhooks { command } => configured(&cli).and_then(|config| pixbox::cli::webhooks(&config, command)),
        Command::Health { ready } => configured(&cli).and_then(|config| pixbox::cli::health(&config, *ready)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The configuration for a command that needs one, with logging set up from it.
fn configured(cli: &Cli) -> anyhow::Result<Config> {
    let config = cli.config()?;
    let tool = matches!(cli.command, Command::Transform { .. } | Command::Plugin { .. });
    pixbox::telemetry::init_tracing(&config.log, config.log_format, tool);
    // Which file the settings came from, so a stray or missing one is never a surprise (through
    // the log, so JSON logs stay JSON).
    match (&config.file, &cli.command) {
        (Some(file), _) => tracing::info!("config: {}", file.display()),
        (None, Command::Serve { .. }) => tracing::info!(
            "config: no file (defaults and environment; looked for {})",
            config.data_dir.join("pixbox.toml").display()
        ),
        (None, _) => {}
    }
    Ok(config)
}
