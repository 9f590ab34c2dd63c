//! Second owners of runtime ports on the host: a process listening on a
//! runtime port (from the cached inventory: the NodePorts Lima forwards)
//! that is not one of the runtime's own forwarders (Lima's host agent or
//! its SSH mux, Docker's proxy). The classic is a stray `ssh -L 6379:...`
//! or an old tunnel daemon; the controller turns each into a `SecondOwner`
//! condition on the port's OperatorPort naming host, pid and process.
//!
//! Linux: /proc/net/tcp{,6} and /proc/*/fd; macOS: `lsof`. Best effort:
//! another user's process may be invisible (it is then not reported).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use portplane_proto::v1alpha1 as pb;

use crate::config::AgentConfig;
use crate::ownership;

/// The latest scan, shared with the controller link's reports.
pub type SecondOwners = Arc<Mutex<Vec<pb::SecondOwner>>>;

/// Reported at most per scan.
const MAX_OWNERS: usize = 256;
/// Command lines are cut here.
const MAX_COMMAND: usize = 256;

/// Whether a listener's process is one of the runtime's own forwarders: a
/// pattern without '/' must equal the process name; one with '/' must
/// occur in its command line (e.g. "/.lima/" for Lima's SSH mux).
pub fn is_runtime_forwarder(process: &str, command: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|p| {
        if p.contains('/') {
            command.contains(p.as_str())
        } else {
            process == p
        }
    })
}

/// LISTEN sockets of a /proc/net/tcp table: (port, address, inode).
pub fn listeners(table: &str) -> Vec<(u16, String, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = fields.get(1)?.rsplit_once(':')?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            if *fields.get(3)? != "0A" || inode == 0 {
                return None;
            }
            let port = u16::from_str_radix(port, 16).ok()?;
            let address = if addr.len() == 8 {
                // IPv4, little-endian hex.
                let n = u32::from_str_radix(addr, 16).ok()?;
                std::net::Ipv4Addr::from(n.swap_bytes()).to_string()
            } else {
                "ipv6".to_string()
            };
            Some((port, address, inode))
        })
        .collect()
}

/// The host-side TCP ports runtime ports occupy
/// ([`ownership::CachedInventory::host_tcp_ports`]).
pub fn runtime_ports(inventory: &ownership::CachedInventory) -> BTreeSet<u16> {
    inventory.host_tcp_ports()
}

/// Listeners on `ports` held by processes outside `allowed` (never this
/// process).
pub fn scan(ports: &BTreeSet<u16>, allowed: &[String]) -> Vec<pb::SecondOwner> {
    if ports.is_empty() {
        return Vec::new();
    }
    let found = if Path::new("/proc/net/tcp").exists() {
        from_proc(ports)
    } else {
        from_lsof(ports)
    };
    let me = std::process::id();
    let mut out: Vec<pb::SecondOwner> = found
        .into_iter()
        .filter(|o| o.pid != me && !is_runtime_forwarder(&o.process, &o.command, allowed))
        .take(MAX_OWNERS)
        .collect();
    out.sort_by_key(|o| (o.port, o.pid, o.address.clone()));
    out.dedup_by_key(|o| (o.port, o.pid, o.address.clone()));
    out
}

fn from_proc(ports: &BTreeSet<u16>) -> Vec<pb::SecondOwner> {
    let mut by_inode: HashMap<u64, (u16, String)> = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            for (port, address, inode) in listeners(&text) {
                if ports.contains(&port) {
                    by_inode.insert(inode, (port, address));
                }
            }
        }
    }
    if by_inode.is_empty() {
        return Vec::new();
    }
    let inodes = by_inode.keys().copied().collect();
    let mut out = Vec::new();
    for (pid, inode) in crate::tunnel::port_holder::socket_holders(&inodes) {
        let Some((port, address)) = by_inode.get(&inode) else {
            continue;
        };
        let process = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let command = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(pb::SecondOwner {
            port: u32::from(*port),
            address: address.clone(),
            pid,
            process,
            command: portplane_core::text::truncate(&command, MAX_COMMAND),
        });
    }
    out
}

/// macOS: `lsof -nP -iTCP -sTCP:LISTEN -Fpcn` (process name as command).
fn from_lsof(ports: &BTreeSet<u16>) -> Vec<pb::SecondOwner> {
    let Ok(out) = std::process::Command::new("lsof")
        .args(["-nP", "-iTCP", "-sTCP:LISTEN", "-Fpcn"])
        .output()
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let (mut pid, mut process) = (0u32, String::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = line.strip_prefix('p') {
            pid = p.parse().unwrap_or(0);
        } else if let Some(c) = line.strip_prefix('c') {
            process = c.to_string();
        } else if let Some(n) = line.strip_prefix('n') {
            let Some((address, port)) = n.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if ports.contains(&port) {
                found.push(pb::SecondOwner {
                    port: u32::from(port),
                    address: address.to_string(),
                    pid,
                    process: process.clone(),
                    command: process.clone(),
                });
            }
        }
    }
    found
}

/// Scan every `[second_owners] interval` until dropped, keeping `out`
/// current; the runtime ports come from the cached inventory each time.
pub async fn keep_scanning(config: AgentConfig, out: SecondOwners) {
    let Some(cache) = config
        .controller
        .as_ref()
        .map(|c| c.inventory_cache.clone())
    else {
        return;
    };
    let allowed = config.second_owners.allowed.clone();
    let mut tick = tokio::time::interval(config.second_owners.interval);
    loop {
        tick.tick().await;
        let ports = match ownership::load_cache(&cache) {
            Ok(Some(inventory)) => runtime_ports(&inventory),
            _ => BTreeSet::new(),
        };
        let allowed = allowed.clone();
        let found = tokio::task::spawn_blocking(move || scan(&ports, &allowed))
            .await
            .unwrap_or_default();
        for o in &found {
            tracing::debug!(port = o.port, pid = o.pid, process = %o.process, "second owner of a runtime port");
        }
        if let Ok(mut slot) = out.lock() {
            *slot = found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_read_from_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:18EB 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n\
   2: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n";
        assert_eq!(
            listeners(table),
            [
                (6379, "127.0.0.1".to_string(), 4242),
                (3000, "0.0.0.0".to_string(), 4444)
            ]
        );
    }

    #[test]
    fn runtime_forwarders_are_recognised_by_name_or_path() {
        let allowed: Vec<String> = crate::config::SecondOwnersSection::default().allowed;
        assert!(is_runtime_forwarder(
            "limactl",
            "limactl hostagent colima",
            &allowed
        ));
        assert!(is_runtime_forwarder(
            "docker-proxy",
            "/usr/bin/docker-proxy -proto tcp",
            &allowed
        ));
        assert!(is_runtime_forwarder(
            "ssh",
            "ssh -F /Users/joel/.colima/_lima/colima/ssh.config lima-colima",
            &allowed
        ));
        assert!(!is_runtime_forwarder(
            "ssh",
            "ssh -N -L 6379:10.5.0.2:6379 lima-colima",
            &allowed
        ));
    }

    #[test]
    fn node_ports_only_and_udp_objects_skipped() {
        let inventory = ownership::CachedInventory {
            revision: 1,
            runtime_ports: vec![
                ownership::RuntimePort {
                    name: "joelclaw.redis.6379".into(),
                    port: 6379,
                    node_port: 30379,
                    ..Default::default()
                },
                ownership::RuntimePort {
                    name: "joelclaw.dns.53-udp".into(),
                    port: 53,
                    node_port: 30053,
                    protocol: portplane_core::Protocol::Udp,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            runtime_ports(&inventory).into_iter().collect::<Vec<_>>(),
            [30379]
        );
    }

    #[test]
    fn a_listener_of_this_test_is_found_with_its_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ports = BTreeSet::from([port]);
        // This process is never its own second owner...
        assert!(scan(&ports, &[]).is_empty());
        // ...but the raw scan sees it, with pid and name.
        let found = from_proc(&ports);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, std::process::id());
        assert_eq!(found[0].address, "127.0.0.1");
    }
}
