//! Stale manual tunnels: before the service starts, whatever listens on an
//! operator port is looked up. A manual tunnel (an `ssh` process of the
//! service's user) is stopped, TERM then KILL after a grace; the agent
//! itself is left to the service manager; anything else is left alone and
//! install fails naming it. (The seed's installer did exactly this.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::tunnel::port_holder::{self, Holder};

/// What holds one operator port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An `ssh` of the service's user: stopped by install.
    ManualTunnel(Holder),
    /// A `portplane-agent` of the service's user: the service manager
    /// replaces it.
    Agent(Holder),
    /// Anything else: install refuses to touch it.
    Foreign(Holder),
}

/// `(forward name, listen)` pairs to their holders.
pub fn survey(forwards: &[(String, SocketAddr)], uid: u32) -> Vec<(String, SocketAddr, Finding)> {
    let mut findings = Vec::new();
    for (name, listen) in forwards {
        for holder in port_holder::holders(listen.port()) {
            let mine = holder.uid == Some(uid);
            let finding = match holder.command.as_str() {
                "ssh" if mine => Finding::ManualTunnel(holder),
                "portplane-agent" if mine => Finding::Agent(holder),
                _ => Finding::Foreign(holder),
            };
            findings.push((name.clone(), *listen, finding));
        }
    }
    findings
}

/// TERM `holder`, wait up to `grace` for it to release `port`, then KILL and
/// wait as long again. Released means: no longer listening on the port (a
/// zombie whose parent has not reaped it yet holds nothing).
pub fn stop(holder: &Holder, port: u16, grace: Duration) -> Result<(), String> {
    let pid = Pid::from_raw(i32::try_from(holder.pid).map_err(|e| e.to_string())?);
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        match kill(pid, signal) {
            Ok(()) => {}
            Err(nix::errno::Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(format!("cannot send {signal} to {holder}: {e}")),
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !port_holder::holders(port)
                .iter()
                .any(|h| h.pid == holder.pid)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Err(format!(
        "{holder} still holds port {port} after TERM and KILL"
    ))
}
