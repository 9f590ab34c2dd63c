//! `portplane-controller`: the in-cluster half of portplane.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Publishes every exposed port of the cluster (Tailscale, LoadBalancer,
/// NodePort, and the declared operator ports) as OperatorPort resources, so
/// `kubectl get operatorports` is the live port inventory.
#[derive(Parser)]
#[command(name = "portplane-controller", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (watches, OperatorPort writes, gRPC for host agents).
    Run {
        /// Controller config (YAML); defaults apply when omitted.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the OperatorPort CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } | Command::Crd => {
            anyhow::bail!("not implemented in this build yet")
        }
    }
}
