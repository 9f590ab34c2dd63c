//! The checks, in the order a person would look: the service, the agent,
//! its forwards, the VM's SSH, the kube API and the Talos API through the
//! forwards, the configs, the runtime ports, the controller link.

use std::path::Path;
use std::time::Duration;

use super::Check;
use crate::config::AgentConfig;
use crate::rewrite::Env;
use crate::service::manager::{self, ServiceView};
use crate::service::{Paths, Platform};
use crate::status::AgentStatus;
use crate::tunnel::port_holder::{self, Holder};

/// How long any one network check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(8);

pub struct Inputs<'a> {
    pub config: &'a AgentConfig,
    pub config_path: &'a Path,
    pub platform: Platform,
    pub paths: &'a Paths,
    pub env: &'a Env,
}

pub async fn run_all(inputs: &Inputs<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let view = manager::query(inputs.platform, inputs.paths);
    checks.extend(service(&view, inputs));
    let status = crate::status::socket::query(&inputs.config.socket, Duration::from_secs(5));
    checks.push(match &status {
        Ok(s) => Check::pass(
            "agent",
            "agent-socket",
            format!(
                "the agent answers on {} (pid {})",
                inputs.config.socket.display(),
                s.pid
            ),
        ),
        Err(e) => Check::fail(
            "agent",
            "agent-socket",
            "the agent answers on its status socket",
            e.to_string(),
            start_hint(&view, inputs),
        ),
    });
    let status = status.ok();
    checks.extend(forwards(inputs, status.as_ref()));
    // Concurrent: with the VM down each would wait out its own timeout.
    let (ssh, kube, talos) = tokio::join!(
        ssh(inputs),
        super::apis::kube(inputs),
        super::apis::talos(inputs)
    );
    checks.extend(ssh);
    checks.extend(kube);
    checks.extend(talos);
    checks.extend(super::ports::runtime_ports(inputs.config));
    checks.extend(controller(inputs.config, status.as_ref()));
    checks
}

fn start_hint(view: &ServiceView, inputs: &Inputs<'_>) -> String {
    if view.installed {
        format!(
            "start it: {}; its log: {}",
            inputs.platform.start_hint(),
            inputs.platform.logs_hint(inputs.paths)
        )
    } else {
        format!(
            "install it: sudo portplane-agent install --config {} (or run it: portplane-agent run --config {})",
            inputs.config_path.display(),
            inputs.config_path.display()
        )
    }
}

fn service(view: &ServiceView, inputs: &Inputs<'_>) -> Vec<Check> {
    const CAT: &str = "service";
    let name = format!(
        "{} {} is installed, loaded and running",
        view.manager, view.name
    );
    let installed = if let Some(e) = &view.error {
        // No launchctl/systemctl, or no systemd as init (a container, a CI
        // box): the agent can still run by hand; it will not start at boot.
        let no_manager = e.contains("No such file or directory")
            || e.contains("not been booted with systemd")
            || e.contains("Failed to connect to bus");
        let hint = format!(
            "{} is how the agent starts at boot; on a host that runs it: sudo portplane-agent install --config {}",
            view.manager,
            inputs.config_path.display()
        );
        if no_manager {
            Check::warn(CAT, "service-installed", name, e.clone(), hint)
        } else {
            Check::fail(CAT, "service-installed", name, e.clone(), hint)
        }
    } else if !view.installed {
        Check::fail(
            CAT,
            "service-installed",
            name,
            format!(
                "{} is not installed",
                inputs.paths.service_file(inputs.platform).display()
            ),
            format!(
                "sudo portplane-agent install --config {}",
                inputs.config_path.display()
            ),
        )
    } else if view.loaded != Some(true) || view.running != Some(true) {
        Check::fail(
            CAT,
            "service-installed",
            name,
            format!(
                "installed but {} ({})",
                if view.loaded == Some(true) {
                    "not running"
                } else {
                    "not loaded"
                },
                view.state.as_deref().unwrap_or("no state")
            ),
            inputs.platform.start_hint(),
        )
    } else {
        Check::pass(CAT, "service-installed", name)
    };
    let looping_name = "the service is not crash-looping";
    let looping = if view.crash_looping() {
        Check::fail(
            CAT,
            "service-crash-loop",
            looping_name,
            format!(
                "last exit {} after {} restarts ({})",
                view.last_exit.unwrap_or_default(),
                view.restarts.unwrap_or_default(),
                view.state.as_deref().unwrap_or("")
            ),
            format!("read why: {}", inputs.platform.logs_hint(inputs.paths)),
        )
    } else {
        Check::pass(CAT, "service-crash-loop", looping_name)
    };
    vec![installed, looping]
}

fn forwards(inputs: &Inputs<'_>, status: Option<&AgentStatus>) -> Vec<Check> {
    const CAT: &str = "forwards";
    inputs
        .config
        .forwards
        .iter()
        .map(|f| {
            let id = format!("forward-{}", f.name);
            let name = format!("{} {} is held by the agent", f.name, f.listen);
            let refused = status
                .and_then(|s| s.forwards.iter().find(|x| x.name == f.name))
                .filter(|x| x.state == "Refused");
            if let Some(r) = refused {
                return Check::fail(
                    CAT,
                    &id,
                    name,
                    r.last_error.clone().unwrap_or_else(|| "refused".into()),
                    "give the forward a port that is not a runtime port",
                );
            }
            let holders = port_holder::holders(f.listen.port());
            let agent_pid = status.map(|s| s.pid);
            match (agent_pid, holders.as_slice()) {
                (Some(pid), hs) if hs.iter().any(|h| h.pid == pid) => Check::pass(
                    CAT,
                    &id,
                    format!("{} {} is held by the agent (pid {pid})", f.name, f.listen),
                ),
                (_, []) => Check::fail(
                    CAT,
                    &id,
                    name,
                    format!("nothing listens on {}", f.listen),
                    "start the agent (see the agent check above)",
                ),
                (_, hs) => Check::fail(
                    CAT,
                    &id,
                    name,
                    format!("{} is held by {}", f.listen, list(hs)),
                    format!(
                        "stop {} (a stale `ssh -L` tunnel is the classic; `sudo portplane-agent install` stops those), then restart the agent",
                        list(hs)
                    ),
                ),
            }
        })
        .collect()
}

pub(super) fn list(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(Holder::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn ssh(inputs: &Inputs<'_>) -> Vec<Check> {
    const CAT: &str = "vm (ssh)";
    let ssh = &inputs.config.ssh;
    let env = crate::run::ssh_env();
    let config_name = format!(
        "{} exists and names host {}",
        ssh.config.display(),
        ssh.host
    );
    let host = match crate::ssh::client_config::resolve_file(&ssh.config, &ssh.host, &env) {
        Ok(h) => h,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "ssh-config",
                config_name,
                e.to_string(),
                "start the VM (`colima start` writes it), or fix [ssh] config/host in the agent config",
            )];
        }
    };
    let mut checks = vec![Check::pass(CAT, "ssh-config", config_name)];
    let name = format!("{}@{}:{} answers SSH", host.user, host.hostname, host.port);
    let tuning = crate::run::session_tuning(inputs.config, Duration::from_secs(5));
    let outcome =
        tokio::time::timeout(CHECK_TIMEOUT, crate::ssh::session::connect(&host, &tuning)).await;
    let mut nodelay = None;
    checks.push(match outcome {
        Ok(Ok(session)) => {
            if ssh.sshd_tcp_nodelay {
                nodelay = Some(nodelay_check(&session).await);
            }
            let _ = session
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
            Check::pass(CAT, "ssh-answers", name)
        }
        Ok(Err(e)) => Check::fail(
            CAT,
            "ssh-answers",
            name,
            e.to_string(),
            "start the VM (`colima start`); `ssh -F <ssh.config> <host>` shows the same problem",
        ),
        Err(_) => Check::fail(
            CAT,
            "ssh-answers",
            name,
            format!("no SSH handshake within {CHECK_TIMEOUT:?}"),
            "the VM is starting or hung: `colima status`, then `colima restart`",
        ),
    });
    checks.extend(nodelay);
    checks
}

/// Whether sshd runs the command that makes it turn on TCP_NODELAY for the
/// tunnel's sessions (`ssh::nodelay`), asked as the agent asks it.
async fn nodelay_check(session: &crate::ssh::session::Session) -> Check {
    use crate::ssh::nodelay::{self, Outcome};
    const CAT: &str = "vm (ssh)";
    let name = "sshd runs `true`, so it sends the tunnel's small packets at once (TCP_NODELAY)";
    let asked = tokio::time::timeout(
        CHECK_TIMEOUT,
        nodelay::request(&session.handle, &session.sinks),
    )
    .await;
    let problem = match asked {
        Ok(Ok(Outcome::Started)) => return Check::pass(CAT, "ssh-nodelay", name),
        Ok(Ok(Outcome::Refused)) => "sshd refused to run `true` (its log says why)".to_string(),
        Ok(Ok(Outcome::NoAnswer)) => "sshd did not answer the request to run `true`".into(),
        Ok(Err(e)) => e.to_string(),
        // Within the check's bound, which is shorter than the agent's.
        Err(_) => format!("sshd did not answer within {CHECK_TIMEOUT:?}"),
    };
    Check::warn(
        CAT,
        "ssh-nodelay",
        name,
        format!("{problem}: {}", nodelay::WITHOUT_IT),
        "let this user open a session and run a command on the VM (sshd_config: MaxSessions above 0), or set [ssh] sshd_tcp_nodelay = false to stop asking",
    )
}

fn controller(config: &AgentConfig, status: Option<&AgentStatus>) -> Vec<Check> {
    const CAT: &str = "controller";
    let Some(c) = &config.controller else {
        return vec![Check::pass(
            CAT,
            "controller",
            "no controller configured (the agent works without one)",
        )];
    };
    let name = format!("the agent is connected to the controller at {}", c.endpoint);
    let link = status.and_then(|s| s.controller.as_ref());
    vec![match link {
        Some(l) if l.connected => Check::pass(CAT, "controller", name),
        Some(l) => Check::fail(
            CAT,
            "controller",
            name,
            l.last_error
                .clone()
                .unwrap_or_else(|| "not connected".into()),
            "check the controller: kubectl -n portplane get pods; and that [controller] endpoint is reachable from here",
        ),
        None => Check::fail(
            CAT,
            "controller",
            name,
            "unknown: the agent does not answer",
            "start the agent first (see the agent check above)",
        ),
    }]
}
