//! `install` and `uninstall`: render the service file, write it atomically,
//! stop stale manual tunnels, and drive the service manager. `--dry-run`
//! prints every file in full and every command and changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::files::{create_owned_dir, snapshot_config, snapshot_path, write_atomically};
use super::stale::{self, Finding};
use super::user::{ServiceUser, UserError};
use super::{LABEL, Paths, Platform, UNIT, launchd, systemd};
use crate::config::{AgentConfig, ConfigError};

/// What the service file is rendered from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Absolute path of the `portplane-agent` binary the service runs.
    pub binary: PathBuf,
    /// Absolute path of the agent config.
    pub config: PathBuf,
    pub user: ServiceUser,
    /// Folders the agent writes (systemd `ReadWritePaths=`): the kubeconfig
    /// and talosconfig folders and its state folders.
    pub read_write: Vec<PathBuf>,
    /// The kubeconfig and talosconfig the agent rewrites.
    pub configs: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub platform: Platform,
    pub config: PathBuf,
    /// Defaults to the running binary.
    pub binary: Option<PathBuf>,
    pub dry_run: bool,
    pub force: bool,
    pub paths: Paths,
    /// How long a stale tunnel gets after TERM (and again after KILL).
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot tell whom the service runs as: {0}")]
    User(#[from] UserError),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "{path} exists with other content; it was not overwritten (compare it with \
         `portplane-agent install --dry-run ...`, then re-run with --force to replace it)"
    )]
    Exists { path: PathBuf },
    #[error("{path}: {source}{}", sudo_hint(source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    PortHeld(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

fn sudo_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root() {
        " (install and uninstall write system folders: run them with sudo)"
    } else {
        ""
    }
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.into(),
        source,
    }
}

/// bootstrap is retried this often: macOS answers `Bootstrap failed: 5:
/// Input/output error` while a bootout is still settling.
const BOOTSTRAP_ATTEMPTS: u32 = 6;
const BOOTSTRAP_RETRY: Duration = Duration::from_millis(500);

/// Gather the inputs: the invoking user, the config read with that user's
/// home for `~`, absolute paths.
pub fn inputs(opts: &Options) -> Result<(Inputs, AgentConfig), InstallError> {
    let user = ServiceUser::invoking()?;
    let config_path = std::fs::canonicalize(&opts.config).map_err(io(&opts.config))?;
    let config = AgentConfig::load_with_home(&config_path, &user.home)?;
    let binary = match &opts.binary {
        Some(b) => std::fs::canonicalize(b).map_err(io(b))?,
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(io(Path::new("portplane-agent")))?,
    };
    let mut read_write: Vec<PathBuf> = [
        config.kubeconfig.path.parent(),
        config.talosconfig.path.parent(),
        config.socket.parent(),
        config
            .controller
            .as_ref()
            .and_then(|c| c.inventory_cache.parent()),
    ]
    .into_iter()
    .flatten()
    .map(Path::to_path_buf)
    .collect();
    read_write.sort();
    read_write.dedup();
    Ok((
        Inputs {
            binary,
            config: config_path,
            user,
            read_write,
            configs: vec![
                config.kubeconfig.path.clone(),
                config.talosconfig.path.clone(),
            ],
        },
        config,
    ))
}

/// The rendered service file.
pub fn render(opts: &Options, inputs: &Inputs) -> Result<String, InstallError> {
    match opts.platform {
        Platform::Launchd => Ok(launchd::render(inputs, &opts.paths)),
        Platform::Systemd => systemd::render(inputs),
    }
}

pub fn install(opts: &Options, out: &mut dyn Write) -> Result<(), InstallError> {
    let (inputs, config) = inputs(opts)?;
    let content = render(opts, &inputs)?;
    let file = opts.paths.service_file(opts.platform);
    let existing = match std::fs::read_to_string(&file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&file)(e)),
    };
    if existing.as_ref().is_some_and(|e| *e != content) && !opts.force {
        return Err(InstallError::Exists { path: file });
    }
    let forwards: Vec<(String, std::net::SocketAddr)> = config
        .forwards
        .iter()
        .map(|f| (f.name.clone(), f.listen))
        .collect();
    // Refuse before changing anything when a port has a foreign holder.
    refuse_foreign(&stale::survey(&forwards, inputs.user.uid), &inputs.user)?;

    let name = match opts.platform {
        Platform::Launchd => LABEL,
        Platform::Systemd => UNIT,
    };
    let mut dirs: Vec<(PathBuf, u32)> = inputs
        .read_write
        .iter()
        .map(|d| (d.clone(), 0o700))
        .collect();
    if opts.platform == Platform::Launchd {
        dirs.push((opts.paths.launchd_log_dir(), 0o755));
    }
    if opts.dry_run {
        return dry_run(opts, &inputs, &forwards, &file, &content, &dirs, out);
    }

    for (dir, mode) in &dirs {
        create_owned_dir(dir, *mode, &inputs.user)?;
    }
    for path in &inputs.configs {
        snapshot_config(path, &inputs.user)?;
    }
    write_atomically(&file, content.as_bytes(), 0o644)?;
    writeln!(out, "wrote {}", file.display()).map_err(io(&file))?;

    match opts.platform {
        Platform::Launchd => {
            // Not loaded is fine: bootout then has nothing to stop.
            let _ = run(&launchd::bootout(), out);
            stop_stale(&forwards, &inputs.user, opts.grace, out)?;
            let [enable, bootstrap, kickstart] = launchd_start(&opts.paths)?;
            run(&enable, out)?;
            run_retrying(&bootstrap, BOOTSTRAP_ATTEMPTS, BOOTSTRAP_RETRY, out)?;
            run(&kickstart, out)?;
        }
        Platform::Systemd => {
            run(&systemd::daemon_reload(), out)?;
            stop_stale(&forwards, &inputs.user, opts.grace, out)?;
            run(&systemd::enable_now(), out)?;
            if existing.is_some() {
                // enable --now leaves a running agent alone; a re-install
                // may bring a new binary or unit.
                run(&systemd::restart(), out)?;
            }
        }
    }
    let w = |out: &mut dyn Write, line: String| writeln!(out, "{line}").map_err(io(&file));
    w(
        out,
        format!(
            "installed {name} ({}) for user {}; it runs {} run --config {}",
            opts.platform,
            inputs.user.name,
            inputs.binary.display(),
            inputs.config.display()
        ),
    )?;
    w(
        out,
        format!("logs: {}", opts.platform.logs_hint(&opts.paths)),
    )?;
    w(
        out,
        "check it: portplane-agent status; portplane-agent doctor --config ...".into(),
    )?;
    Ok(())
}

fn launchd_start(paths: &Paths) -> Result<[Vec<String>; 3], InstallError> {
    launchd::start(paths)
        .try_into()
        .map_err(|_| InstallError::Unsupported("launchd start sequence is not 3 commands".into()))
}

#[allow(clippy::too_many_arguments)]
fn dry_run(
    opts: &Options,
    inputs: &Inputs,
    forwards: &[(String, std::net::SocketAddr)],
    file: &Path,
    content: &str,
    dirs: &[(PathBuf, u32)],
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    let mut text = String::new();
    text.push_str(&format!(
        "dry run: nothing is changed. The service runs as {} (uid {}).\n",
        inputs.user.name, inputs.user.uid
    ));
    for (dir, mode) in dirs {
        text.push_str(&format!(
            "would create folder {} (mode {mode:o}, owner {}) unless it exists\n",
            dir.display(),
            inputs.user.name
        ));
    }
    for path in &inputs.configs {
        let snapshot = snapshot_path(path);
        if path.exists() && !snapshot.exists() {
            text.push_str(&format!(
                "would copy {} to {} (for uninstall --restore-configs)\n",
                path.display(),
                snapshot.display()
            ));
        }
    }
    text.push_str(&format!(
        "would write {} (mode 644, owner root):\n{content}",
        file.display()
    ));
    if !content.ends_with('\n') {
        text.push('\n');
    }
    let findings = stale::survey(forwards, inputs.user.uid);
    let stale_line = |findings: &[(String, std::net::SocketAddr, Finding)]| {
        let mut s = String::new();
        for (name, listen, f) in findings {
            if let Finding::ManualTunnel(h) = f {
                s.push_str(&format!(
                    "would stop stale manual tunnel {h} on {listen} (forward {name})\n"
                ));
            }
        }
        if s.is_empty() {
            s.push_str("no stale manual tunnel on the operator ports\n");
        }
        s
    };
    let mut commands: Vec<Vec<String>> = Vec::new();
    match opts.platform {
        Platform::Launchd => {
            commands.push(launchd::bootout());
            text.push_str(&format!("would run: {}\n", commands[0].join(" ")));
            text.push_str(&stale_line(&findings));
            for c in launchd::start(&opts.paths) {
                text.push_str(&format!("would run: {}\n", c.join(" ")));
            }
        }
        Platform::Systemd => {
            text.push_str(&format!(
                "would run: {}\n",
                systemd::daemon_reload().join(" ")
            ));
            text.push_str(&stale_line(&findings));
            text.push_str(&format!("would run: {}\n", systemd::enable_now().join(" ")));
            if file.exists() {
                text.push_str(&format!("would run: {}\n", systemd::restart().join(" ")));
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(io(file))
}

fn refuse_foreign(
    findings: &[(String, std::net::SocketAddr, Finding)],
    user: &ServiceUser,
) -> Result<(), InstallError> {
    let foreign: Vec<String> = findings
        .iter()
        .filter_map(|(name, listen, f)| match f {
            Finding::Foreign(h) => Some(format!(
                "forward \"{name}\": {listen} is held by {h}, which is not a manual ssh tunnel \
                 of {}; it was left alone. Stop it, or give the forward another listen port",
                user.name
            )),
            _ => None,
        })
        .collect();
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(InstallError::PortHeld(foreign.join("\n")))
    }
}

fn stop_stale(
    forwards: &[(String, std::net::SocketAddr)],
    user: &ServiceUser,
    grace: Duration,
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    let findings = stale::survey(forwards, user.uid);
    refuse_foreign(&findings, user)?;
    for (name, listen, finding) in &findings {
        match finding {
            Finding::ManualTunnel(h) => {
                stale::stop(h, listen.port(), grace).map_err(InstallError::PortHeld)?;
                writeln!(
                    out,
                    "stopped stale manual tunnel pid {} ({}) on {listen} (forward {name})",
                    h.pid, h.command
                )
                .map_err(io(Path::new("stdout")))?;
            }
            Finding::Agent(h) => {
                writeln!(
                    out,
                    "{listen} is held by the agent itself ({h}); the service manager replaces it"
                )
                .map_err(io(Path::new("stdout")))?;
            }
            Finding::Foreign(_) => {}
        }
    }
    Ok(())
}

/// Run `command`, echoing it; its output goes to `out`.
pub(super) fn run(command: &[String], out: &mut dyn Write) -> Result<(), InstallError> {
    let line = command.join(" ");
    writeln!(out, "$ {line}").map_err(io(Path::new("stdout")))?;
    let (program, args) = command
        .split_first()
        .ok_or_else(|| InstallError::Unsupported("empty command".into()))?;
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(io(Path::new(program)))?;
    out.write_all(&output.stdout)
        .map_err(io(Path::new("stdout")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(InstallError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn run_retrying(
    command: &[String],
    attempts: u32,
    pause: Duration,
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    let mut attempt = 1;
    loop {
        match run(command, out) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < attempts => {
                writeln!(out, "{e}; retrying in {pause:?}").map_err(io(Path::new("stdout")))?;
                std::thread::sleep(pause);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
