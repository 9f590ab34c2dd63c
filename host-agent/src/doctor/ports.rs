//! Runtime ports from the cached inventory: a second owner (a stray
//! `ssh -L 6379:...` is the classic) is a defect.

use super::Check;
use super::checks::list;
use crate::config::AgentConfig;
use crate::tunnel::port_holder::{self, Holder};

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

pub fn runtime_ports(config: &AgentConfig) -> Vec<Check> {
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
        // Holders are TCP listeners; a UDP or SCTP port has none to find.
        if rp.protocol != portplane_core::Protocol::Tcp {
            continue;
        }
        let mut ports = vec![rp.port, rp.node_port];
        ports.retain(|p| *p != 0);
        ports.dedup();
        for port in ports {
            // The agent holds its operator ports by right; a runtime port on
            // the same number is the cluster's mistake (the controller marks
            // it OperatorPortClash), not a process to stop here.
            if let Some(forward) = config
                .forwards
                .iter()
                .find(|f| portplane_core::ownership::collides(f.listen.port(), port, rp.protocol))
            {
                checks.push(Check::warn(
                    CAT,
                    &format!("runtime-port-{port}"),
                    format!(
                        "runtime port {port} ({}) is not an operator port's local port",
                        rp.name
                    ),
                    format!(
                        "{port} is the local port of operator port {}, which this agent holds; the runtime cannot publish it on this host (the controller reports OperatorPortClash)",
                        forward.name
                    ),
                    format!("give {} another port", rp.name),
                ));
                continue;
            }
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
