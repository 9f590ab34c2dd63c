//! Harnesses for portplane's end-to-end tests: a real control plane
//! ([`cluster`]), a real sshd standing in for the Colima VM ([`sshd`]), real
//! agent credentials ([`agents`]), and the paths of the workspace's own binaries.

pub mod agent_cli;
pub mod agents;
pub mod blackhole;
pub mod cluster;
pub mod controller;
pub mod docker;
pub mod helm;
pub mod procfs;
pub mod soak;
pub mod sshd;

use std::path::PathBuf;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A free loopback port for a server a test starts (probed by binding, then
/// released). Chosen below the kernel's ephemeral range, not with port 0:
/// ephemeral ports are also the source ports of every outgoing connection,
/// so a test running beside this one (200 clients at once) could take the
/// port between the probe and the server's bind. A random start keeps
/// parallel tests and processes from probing the same ports in turn, and a
/// port is never handed out twice in one process: two tests running side by
/// side could otherwise both be given a port that neither had bound yet
/// (seen once in 20 `tunnel_churn` runs: "Address already in use", held by
/// the other test's agent).
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u16 = 10_000;
    let first_ephemeral = ephemeral_ports_start().unwrap_or(32_768);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    if first_ephemeral <= FLOOR + 1_000 {
        // An unusual range: fall back to what the kernel hands out, still
        // never the same port twice.
        for _ in 0..64 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            if handed_out.insert(port) {
                return Ok(port);
            }
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "the kernel kept handing out ports already given to other tests",
        ));
    }
    let span = u64::from(first_ephemeral - FLOOR);
    let start = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    for i in 0..span {
        // In range: the remainder is below `span`, which fits in a u16.
        let port = FLOOR + ((start.wrapping_add(i)) % span) as u16;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port in {FLOOR}..{first_ephemeral}"),
    ))
}

/// Ports [`free_port`] returned in this process.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The first port of Linux's ephemeral range
/// (/proc/sys/net/ipv4/ip_local_port_range).
fn ephemeral_ports_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Path of a workspace binary (`portplane-agent`, `portplane-controller`),
/// built by `cargo build --workspace` into the same profile folder as this
/// test binary. Panics with the fix when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    // target/<profile>/deps/<test-binary> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; build the workspace first: cargo build --workspace (make test does)",
        path.display()
    );
    path
}
