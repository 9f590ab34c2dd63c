//! The checks, in the order a person would look: the service, the agent,
//! its forwards, the VM's SSH, the kube API and the Talos API through the
//! forwards, the configs, the runtime ports, the controller link.

use std::path::Path;
use std::time::Duration;

use super::{Check, kube_api, talos_tls};
use crate::config::AgentConfig;
use crate::rewrite::{self, Env};
use crate::service::manager::{self, ServiceView};
use crate::service::{Paths, Platform};
use crate::status::AgentStatus;
use crate::tunnel::port_holder::{self, Holder};

/// How long any one network check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(8);

/// Processes that legitimately hold a runtime port on the host: Lima's and
/// Colima's port forwarders, Docker's proxies, Tailscale.
const RUNTIME_OWNERS: &[&str] = &[
    "limactl",
    "lima",
    "colima",
    "docker-proxy",
    "dockerd",
    "com.docker.backend",
    "vpnkit",
    "gvproxy",
    "tailscaled",
];

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
    let (ssh, kube, talos) = tokio::join!(ssh(inputs), kube(inputs), talos(inputs));
    checks.extend(ssh);
    checks.extend(kube);
    checks.extend(talos);
    checks.extend(runtime_ports(inputs.config));
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

fn list(holders: &[Holder]) -> String {
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
    checks.push(match outcome {
        Ok(Ok(session)) => {
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
    checks
}

async fn kube(inputs: &Inputs<'_>) -> Vec<Check> {
    const CAT: &str = "kubernetes";
    let config = inputs.config;
    let rewrite_hint = format!(
        "the running agent rewrites it within a second; or once: portplane-agent rewrite --config {}",
        inputs.config_path.display()
    );
    let Some(forward) = config.forward(&config.kubeconfig.forward) else {
        return Vec::new();
    };
    let path = match rewrite::apply::kubeconfig_path(config, inputs.env) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "kubeconfig-points",
                "the kubeconfig points at the kube-apiserver forward",
                e.to_string(),
                rewrite_hint,
            )];
        }
    };
    let target = rewrite::apply::kube_target(config);
    let points_name = format!(
        "{} points cluster {} at {}",
        path.display(),
        config.kubeconfig.cluster,
        target.server
    );
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "kubeconfig-points",
                points_name,
                format!("{}: {e}", path.display()),
                "get it: talosctl kubeconfig",
            )];
        }
    };
    let edited =
        match rewrite::kubeconfig::rewrite(&text, &target, &mut rewrite::apply::port_is_dead) {
            Ok(e) => e,
            Err(e) => {
                return vec![Check::fail(
                    CAT,
                    "kubeconfig-points",
                    points_name,
                    format!("{}: {e}", path.display()),
                    "get it: talosctl kubeconfig",
                )];
            }
        };
    let mut checks = Vec::new();
    checks.push(if edited.changed {
        Check::fail(
            CAT,
            "kubeconfig-points",
            points_name,
            format!(
                "cluster \"{}\" has server {}",
                edited.report.cluster,
                edited.report.previous_server.as_deref().unwrap_or("(none)")
            ),
            rewrite_hint.clone(),
        )
    } else {
        Check::pass(CAT, "kubeconfig-points", points_name)
    });
    checks.push(if edited.report.stale.is_empty() {
        Check::pass(CAT, "kubeconfig-stale", "no stale contexts of older cluster generations")
    } else {
        Check::fail(
            CAT,
            "kubeconfig-stale",
            "no stale contexts of older cluster generations",
            format!(
                "{}: contexts {} point at loopback ports nothing listens on",
                path.display(),
                edited.report.stale.join(", ")
            ),
            format!(
                "remove them: kubectl config delete-context {} (or set [kubeconfig] prune_stale = true and the agent does it)",
                edited.report.stale.join(" ")
            ),
        )
    });
    let name = format!(
        "the kube API answers an authenticated request through {} (TLS verified)",
        forward.listen
    );
    checks.push(
        match tokio::time::timeout(
            CHECK_TIMEOUT,
            kube_api::whoami(&path, &edited.report.cluster, &target.server),
        )
        .await
        {
            Ok(Ok(user)) => Check::pass(CAT, "kube-api", format!("{name}: you are {user}")),
            Ok(Err(e)) => Check::fail(CAT, "kube-api", name, e.to_string(), kube_api::hint(&e)),
            Err(_) => Check::fail(
                CAT,
                "kube-api",
                name,
                format!("no answer within {CHECK_TIMEOUT:?}"),
                "check the vm (ssh) checks above; then `kubectl get nodes` for the same request",
            ),
        },
    );
    checks
}

async fn talos(inputs: &Inputs<'_>) -> Vec<Check> {
    const CAT: &str = "talos";
    let config = inputs.config;
    let Some(forward) = config.forward(&config.talosconfig.forward) else {
        return Vec::new();
    };
    let path = rewrite::apply::talosconfig_path(config, inputs.env);
    let target = rewrite::apply::talos_target(config);
    let points_name = format!(
        "{} points context {} at {}",
        path.display(),
        config.talosconfig.context,
        target.endpoint
    );
    let rewrite_hint = format!(
        "the running agent rewrites it within a second; or once: portplane-agent rewrite --config {}",
        inputs.config_path.display()
    );
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "talosconfig-points",
                points_name,
                format!("{}: {e}", path.display()),
                "get it: talosctl config merge, or re-create the cluster",
            )];
        }
    };
    let edited = match rewrite::talosconfig::rewrite(&text, &target) {
        Ok(e) => e,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "talosconfig-points",
                points_name,
                format!("{}: {e}", path.display()),
                "fix or re-create it: talosctl config merge",
            )];
        }
    };
    let mut checks = vec![if edited.changed {
        Check::fail(
            CAT,
            "talosconfig-points",
            points_name,
            format!(
                "context \"{}\" has endpoints [{}]",
                edited.report.context,
                edited.report.previous_endpoints.join(", ")
            ),
            rewrite_hint,
        )
    } else {
        Check::pass(CAT, "talosconfig-points", points_name)
    }];
    let name = format!(
        "the Talos API completes a TLS handshake through {}",
        forward.listen
    );
    checks.push(
        match tokio::time::timeout(
            CHECK_TIMEOUT,
            talos_tls::handshake(&text, &edited.report.context, forward.listen),
        )
        .await
        {
            Ok(Ok(())) => Check::pass(CAT, "talos-api", name),
            Ok(Err(e)) => Check::fail(
                CAT,
                "talos-api",
                name,
                e.to_string(),
                "check the vm (ssh) checks above; then `talosctl version` for the same connection",
            ),
            Err(_) => Check::fail(
                CAT,
                "talos-api",
                name,
                format!("no handshake within {CHECK_TIMEOUT:?}"),
                "check the vm (ssh) checks above; then `talosctl version`",
            ),
        },
    );
    checks
}

fn runtime_ports(config: &AgentConfig) -> Vec<Check> {
    const CAT: &str = "runtime ports";
    let Some(controller) = &config.controller else {
        return Vec::new();
    };
    let inventory = match crate::ownership::load_cache(&controller.inventory_cache) {
        Ok(Some(i)) => i,
        Ok(None) => {
            return vec![Check::warn(
                CAT,
                "runtime-ports",
                "no second owner holds a runtime port",
                format!(
                    "{}: no cached inventory yet",
                    controller.inventory_cache.display()
                ),
                "the agent caches it once the controller link is up (see controller below)",
            )];
        }
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "runtime-ports",
                "no second owner holds a runtime port",
                e.to_string(),
                "remove the file; the agent writes it again from the controller",
            )];
        }
    };
    let mut checks = Vec::new();
    let mut clean = true;
    for rp in &inventory.runtime_ports {
        for port in [rp.port, rp.node_port].into_iter().filter(|p| *p != 0) {
            let strays: Vec<Holder> = port_holder::holders(port)
                .into_iter()
                .filter(|h| !is_runtime_owner(h))
                .collect();
            if !strays.is_empty() {
                clean = false;
                checks.push(Check::fail(
                    CAT,
                    &format!("runtime-port-{port}"),
                    format!("runtime port {port} ({}) has no second owner", rp.name),
                    format!(
                        "{} also listens on {port}, which belongs to Colima/Lima or the Tailscale operator",
                        list(&strays)
                    ),
                    format!("stop it: kill {}", strays.iter().map(|h| h.pid.to_string()).collect::<Vec<_>>().join(" ")),
                ));
            }
        }
    }
    if clean {
        checks.push(Check::pass(
            CAT,
            "runtime-ports",
            format!(
                "no second owner holds any of the {} runtime ports (inventory revision {})",
                inventory.runtime_ports.len(),
                inventory.revision
            ),
        ));
    }
    checks
}

/// A runtime port's own holder: Lima/Colima/Docker/Tailscale, or Lima's own
/// ssh ControlMaster (older Lima forwards ports through it).
fn is_runtime_owner(h: &Holder) -> bool {
    RUNTIME_OWNERS.contains(&h.command.as_str())
        || (h.command == "ssh" && command_line(h.pid).contains("_lima/"))
}

fn command_line(pid: u32) -> String {
    if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        return String::from_utf8_lossy(&bytes).replace('\0', " ");
    }
    std::process::Command::new("ps")
        .args(["-o", "command=", "-p", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
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
