//! The `switchyard` command: run the proxy, or check a config file.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Switchyard: a PostgreSQL pooling proxy with WebAssembly routing policies.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = "switchyard.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and print every problem found, naming the key.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match switchyard::config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        // Loading the routing policies compiles them and runs their `init` on the config.
        if let Err(e) = switchyard::pool::Pools::from_config(&config, 1) {
            eprintln!("switchyard: invalid config: {}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
        println!(
            "{}: OK ({} pools)",
            cli.config.display(),
            config.pools.len()
        );
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    // The main thread coordinates shutdown; accepting and sessions run on worker threads.
    let mut runtime = tokio::runtime::Builder::new_current_thread();
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before binding: a SIGHUP from someone who saw the port open is caught, not fatal.
        let reloads = match switchyard::reload::Reloads::catch(cli.config.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGHUP; policies will not reload");
                None
            }
        };
        let listeners = match switchyard::listener::Listeners::bind(&config.general).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("switchyard: {e}");
                return ExitCode::FAILURE;
            }
        };
        match switchyard::run(config, listeners, stop_signal(), reloads).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: cannot start: {e}");
                ExitCode::from(2)
            }
        }
    })
}

/// Resolves on the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
