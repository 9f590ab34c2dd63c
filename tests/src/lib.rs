//! Harnesses for portplane's end-to-end tests: a real control plane
//! ([`cluster`]), a real sshd standing in for the Colima VM ([`sshd`]), and the
//! paths of the workspace's own binaries.

pub mod cluster;
pub mod controller;
pub mod procfs;
pub mod sshd;

use std::path::PathBuf;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// A free loopback port (bound, then released, so there is a small window in
/// which another process could take it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
