//! `portplane-controller`: the in-cluster half of portplane.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use portplane_controller::config::Config;

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
    ///
    /// Uses $KUBECONFIG, ~/.kube/config or the in-cluster service account.
    /// Stops cleanly on SIGTERM/SIGINT, releasing its lease.
    Run {
        /// Controller config (YAML); defaults apply when omitted.
        #[arg(long, value_name = "FILE", env = "PORTPLANE_CONTROLLER_CONFIG")]
        config: Option<PathBuf>,
        /// Listen on this IP instead of the config's httpListen/grpcListen
        /// addresses (their ports are kept). The Helm chart sets it to the
        /// pod's IP when the pod uses the host's network.
        #[arg(long, value_name = "IP", env = "PORTPLANE_LISTEN_ADDRESS")]
        listen_address: Option<IpAddr>,
    },
    /// Print the OperatorPort CustomResourceDefinition as YAML
    /// (apply it with `portplane-controller crd | kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", portplane_controller::crd::crd_yaml()?);
            Ok(())
        }
        Command::Run {
            config,
            listen_address,
        } => {
            init_tracing();
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            if let Some(ip) = listen_address {
                config.http_listen.set_ip(ip);
                config.grpc_listen.set_ip(ip);
            }
            // One thread: the controller waits on the API server, it does not
            // compute; cross-thread wake-ups cost more CPU than they save, and
            // that CPU is the API server's on a small machine.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(portplane_controller::runtime::run(config))?;
            Ok(())
        }
    }
}

/// JSON logs when stderr is not a terminal (in a Pod); RUST_LOG filters.
fn init_tracing() {
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
