//! `portplane-agent`: the host half of portplane.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Holds the operator tunnel (127.0.0.1:16443 -> kube-apiserver,
/// 127.0.0.1:15000 -> Talos API) over its own SSH connection, keeps
/// ~/.kube/config and ~/.talos/config pointed at it, and refuses to tunnel
/// runtime ports, which belong to Colima/Lima or the Tailscale operator.
#[derive(Parser)]
#[command(name = "portplane-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold the operator tunnel, rewrite configs, report to the controller.
    Run {
        /// Agent config (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Get this host its controller credential: create (or reuse)
    /// ServiceAccount portplane-agent-<name> with your kubeconfig and write a
    /// fresh token for audience portplane.dev/agent to [controller] token_file.
    Enroll {
        /// Agent config (TOML); its name, [controller] and [kubeconfig] sections say what to do.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How long the token is valid (the API server may cap it); e.g. 90d, 1y.
        #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = humantime::parse_duration)]
        lifetime: std::time::Duration,
    },
    /// Point kubeconfig and talosconfig at the operator ports, once.
    Rewrite {
        /// Agent config (TOML); its [kubeconfig] and [talosconfig] sections say what to rewrite.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run_agent(&config),
        Command::Rewrite { config } => rewrite_once(&config),
        Command::Enroll { config, lifetime } => enroll(&config, lifetime),
    }
}

/// `enroll`: one line on success; exits non-zero naming what failed.
fn enroll(path: &std::path::Path, lifetime: std::time::Duration) -> anyhow::Result<()> {
    let config = portplane_agent::config::AgentConfig::load(path)?;
    let env = portplane_agent::rewrite::Env::from_process();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let enrolled = runtime.block_on(portplane_agent::enroll::enroll(
        &config, path, &env, lifetime,
    ))?;
    println!("enrolled as agent {:?}: {enrolled}", config.name);
    Ok(())
}

/// `run`: load the config (a bad file exits non-zero naming file, key and
/// expectation), then hold the tunnel on a multi-threaded runtime so the
/// pool's sessions can use every core.
fn run_agent(config: &std::path::Path) -> anyhow::Result<()> {
    init_tracing();
    let config = portplane_agent::config::AgentConfig::load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(portplane_agent::run::run(config))?;
    Ok(())
}

/// `rewrite`: both files, each reported on its own line; exits non-zero
/// (after trying both) when either is missing, malformed or unwritable.
fn rewrite_once(config: &std::path::Path) -> anyhow::Result<()> {
    use portplane_agent::rewrite::{self, Env};
    let config = portplane_agent::config::AgentConfig::load(config)?;
    let env = Env::from_process();
    let mut failed = 0;
    for result in [
        rewrite::rewrite_kubeconfig(&config, &env),
        rewrite::rewrite_talosconfig(&config, &env),
    ] {
        match result {
            Ok(report) => {
                println!("{report}");
                for warning in &report.warnings {
                    eprintln!("warning: {}: {warning}", report.path.display());
                }
            }
            Err(error) => {
                eprintln!("error: {error}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        // The errors above say everything; exit without anyhow's report.
        eprintln!("{failed} of 2 files not rewritten");
        std::process::exit(1);
    }
    Ok(())
}

/// Logs to stderr: JSON when it is not a terminal (launchd, systemd, tests),
/// human-readable otherwise; `RUST_LOG` filters (default `info`).
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
