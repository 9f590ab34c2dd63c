//! `portplane-agent`: the host half of portplane.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Point kubeconfig and talosconfig at the operator ports, once.
    Rewrite {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show the running agent's tunnels.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the host: SSH config, ports, kubeconfig, talosconfig, stray tunnels.
    Doctor {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Install the agent as a launchd daemon (macOS) or systemd unit (Linux).
    Install {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print what would be written and run, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Service manager; defaults to the host's.
        #[arg(long)]
        platform: Option<Platform>,
    },
    /// Remove what `install` wrote.
    Uninstall,
}

#[derive(Clone, Copy, ValueEnum)]
enum Platform {
    Launchd,
    Systemd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. }
        | Command::Rewrite { .. }
        | Command::Status { .. }
        | Command::Doctor { .. }
        | Command::Install { .. }
        | Command::Uninstall => anyhow::bail!("not implemented in this build yet"),
    }
}
