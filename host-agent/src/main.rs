//! `portplane-agent`: the host half of portplane.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use portplane_agent::service::{Paths, Platform};

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
    /// Ask the running agent how its forwards, SSH sessions and controller
    /// link are, and the service manager how the service is. Exit 1 when no
    /// agent answers.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The agent's status socket [default: the config's `socket`, else
        /// ~/.local/state/portplane/agent.sock].
        #[arg(long, value_name = "PATH", env = "PORTPLANE_SOCKET")]
        socket: Option<PathBuf>,
        /// Agent config, to find its socket.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Install the agent as a boot-time service running as you (launchd
    /// LaunchDaemon on macOS, systemd unit on Linux), stopping stale manual
    /// `ssh -L` tunnels on the operator ports first. Run with sudo.
    Install {
        /// Agent config (TOML) the service runs with.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print every file and command; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace a service file that has other content.
        #[arg(long)]
        force: bool,
        /// The binary the service runs [default: this one].
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Check the host: the service, the agent and its forwards, the VM's
    /// SSH, the kube and Talos APIs through the forwards, the configs, the
    /// runtime ports, the controller link. Exit 1 when a check fails.
    Doctor {
        /// Agent config (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        output: Output,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Stop and remove the service installed by `install`.
    Uninstall {
        /// Also put back the kubeconfig and talosconfig as they were before
        /// the first install (needs --config).
        #[arg(long, requires = "config")]
        restore_configs: bool,
        /// Agent config, to find the kubeconfig and talosconfig.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Which service manager, and where its files live.
#[derive(clap::Args)]
struct ServiceArgs {
    /// Service manager [default: launchd on macOS, systemd elsewhere].
    #[arg(long, value_enum)]
    platform: Option<Platform>,
    /// Folder that stands for `/` when placing the plist/unit and logs
    /// (tests install into a temporary folder).
    #[arg(long, value_name = "DIR", env = "PORTPLANE_INSTALL_ROOT", hide = true)]
    root: Option<PathBuf>,
}

impl ServiceArgs {
    fn platform(&self) -> Platform {
        self.platform.unwrap_or_else(Platform::native)
    }

    fn paths(&self) -> Paths {
        Paths::new(self.root.as_deref())
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run_agent(&config),
        Command::Rewrite { config } => rewrite_once(&config),
        Command::Status {
            json,
            socket,
            config,
            service,
        } => status(json, socket, config, &service),
        Command::Install {
            config,
            dry_run,
            force,
            binary,
            service,
        } => {
            let opts = portplane_agent::service::install::Options {
                platform: service.platform(),
                config,
                binary,
                dry_run,
                force,
                paths: service.paths(),
                grace: std::time::Duration::from_secs(3),
            };
            portplane_agent::service::install::install(&opts, &mut std::io::stdout())?;
            Ok(())
        }
        Command::Doctor {
            config,
            output,
            service,
        } => doctor(&config, output, &service),
        Command::Uninstall {
            restore_configs,
            config,
            service,
        } => {
            let config = match config.filter(|_| restore_configs) {
                Some(path) => Some(portplane_agent::config::AgentConfig::load(&path)?),
                None => None,
            };
            portplane_agent::service::uninstall::uninstall(
                service.platform(),
                &service.paths(),
                config.as_ref(),
                &mut std::io::stdout(),
            )?;
            Ok(())
        }
        Command::Enroll { config, lifetime } => enroll(&config, lifetime),
    }
}

/// `doctor`: every check, then exit 1 when one failed.
fn doctor(
    config_path: &std::path::Path,
    output: Output,
    service: &ServiceArgs,
) -> anyhow::Result<()> {
    use portplane_agent::doctor;
    let config = portplane_agent::config::AgentConfig::load(config_path)?;
    let env = portplane_agent::rewrite::Env::from_process();
    let paths = service.paths();
    let inputs = doctor::checks::Inputs {
        config: &config,
        config_path,
        platform: service.platform(),
        paths: &paths,
        env: &env,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = doctor::Report::new(runtime.block_on(doctor::checks::run_all(&inputs)));
    match output {
        Output::Text => print!("{}", doctor::render(&report)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

/// `status`: the agent's answer and the service manager's view; exit 1
/// with the command that starts it when no agent answers.
fn status(
    json: bool,
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    service: &ServiceArgs,
) -> anyhow::Result<()> {
    use portplane_agent::status::{StatusReport, render, socket as sock};
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => portplane_agent::config::AgentConfig::load(&c)?.socket,
        // Under sudo, the invoking user's agent (HOME may be root's).
        (None, None) => match std::env::var("SUDO_USER") {
            Ok(user) if !user.is_empty() => {
                let user = portplane_agent::service::user::ServiceUser::named(&user)?;
                sock::default_path(&user.home)
            }
            _ => sock::default_path(&portplane_agent::config::home_dir()),
        },
    };
    let platform = service.platform();
    let view = portplane_agent::service::manager::query(platform, &service.paths());
    let (agent, error) = match sock::query(&socket, std::time::Duration::from_secs(5)) {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e)),
    };
    let report = StatusReport {
        socket: socket.display().to_string(),
        agent,
        service: view,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render::report(&report));
    }
    if let Some(error) = error {
        let hint = if report.service.installed {
            format!("start it: {}", platform.start_hint())
        } else {
            "start it: sudo portplane-agent install --config FILE (or portplane-agent run --config FILE)"
                .to_string()
        };
        eprintln!("portplane-agent is not running: {error}. {hint}");
        std::process::exit(1);
    }
    Ok(())
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
/// expectation), then hold the tunnel on one worker thread, as `ssh -L`
/// serves all its forwards from one process; `TOKIO_WORKER_THREADS=N`
/// (tokio's own variable) in the agent's environment gives it N instead.
/// Blocking work (files, /proc, host key checks) runs off that thread.
///
/// Why one: on two cores (AMD EPYC and Intel Xeon), with a worker per core
/// new connections took 1.02-1.07x `ssh -L`'s time (the 95% interval of
/// the per-round ratio above 1.0 in every run), on one worker 1.01-1.04x,
/// and downloads over one or two sessions were no slower or costlier per
/// GB (BENCHMARKS.md, eleventh run, issue 12). On a many-core Mac, as with
/// `ssh -L`, the tunnel then uses at most one core.
fn run_agent(config_path: &std::path::Path) -> anyhow::Result<()> {
    init_tracing();
    let config = portplane_agent::config::AgentConfig::load(config_path)?;
    let config_path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.into());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // An explicit count would override tokio's own reading of the variable.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(1);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(portplane_agent::run::run(config, config_path))?;
    Ok(())
}

/// `rewrite`: both files, each reported on its own line; exits non-zero
/// (after trying both) when either is missing, malformed or unwritable.
fn rewrite_once(config: &std::path::Path) -> anyhow::Result<()> {
    use portplane_agent::rewrite::{self, Env};
    // Progress (a wait for kubectl's lock) goes to stderr as log lines.
    init_tracing();
    let config = portplane_agent::config::AgentConfig::load(config)?;
    let env = Env::from_process();
    let mut failed = 0;
    for result in [
        rewrite::rewrite_kubeconfig(&config.rewrite_plan(), &env),
        rewrite::rewrite_talosconfig(&config.rewrite_plan(), &env),
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
