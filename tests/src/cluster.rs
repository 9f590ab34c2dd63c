//! A real kube-apiserver + etcd (+ kube-controller-manager) on loopback,
//! started through `scripts/cluster` so tests and the demo share one way of
//! bringing it up.
//!
//! Each test binary gets its own control plane (`ControlPlane::shared`), in a
//! temp state folder with its own free ports, so test binaries run in
//! parallel without sharing state. Tests that must own the whole cluster (for
//! example two controllers fighting over cluster-scoped objects) start one of
//! their own with `ControlPlane::start`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, bail};

use crate::repo_root;

/// A running control plane. Stopped (by the pids `scripts/cluster` recorded)
/// when dropped; the shared one is stopped when the test binary exits.
pub struct ControlPlane {
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    bindir: PathBuf,
    // Held so the folder outlives the processes that write into it.
    _temp: Option<tempfile::TempDir>,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();
static SHARED_STATE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    ///
    /// Panics with the script's output when it cannot be started: tests that
    /// need the control plane fail loudly instead of skipping.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| {
            let plane = ControlPlane::start()
                .unwrap_or_else(|e| panic!("cannot start the test control plane: {e:#}"));
            if let Ok(mut dir) = SHARED_STATE_DIR.lock() {
                *dir = Some(plane.state_dir.clone());
            }
            register_exit_teardown();
            plane
        })
    }

    /// A control plane of its own, on fresh loopback ports.
    pub fn start() -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with_nodes(0)
    }

    /// A control plane of its own with `nodes` real nodes (containerd,
    /// kubelet; kube-scheduler), node i at 127.0.0.i, running hostNetwork
    /// pods only (see scripts/lib/node.bash).
    pub fn start_with_nodes(nodes: u8) -> anyhow::Result<ControlPlane> {
        let temp = tempfile::Builder::new()
            .prefix("portplane-cluster-")
            .tempdir()?;
        let state_dir = temp.path().join("state");
        let mut up = script(&state_dir);
        up.arg("up");
        if nodes > 0 {
            up.args(["--nodes", &nodes.to_string()]);
        }
        let output = up
            // If this process dies without running its teardown, the script's
            // watchdog stops the control plane when it notices.
            .env(
                "PORTPLANE_CLUSTER_OWNER_PID",
                std::process::id().to_string(),
            )
            .output()
            .context("running scripts/cluster up")?;
        if !output.status.success() {
            bail!(
                "scripts/cluster up failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let kubeconfig = PathBuf::from(String::from_utf8(output.stdout)?.trim());
        let bindir = script(&state_dir).arg("bindir").output()?;
        let bindir = PathBuf::from(String::from_utf8(bindir.stdout)?.trim());
        Ok(ControlPlane {
            state_dir,
            kubeconfig,
            bindir,
            _temp: Some(temp),
        })
    }

    /// The folder `scripts/cluster` keeps the plane's state in (inside a
    /// temp folder of its own).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Folder of the Go-side binaries: kube-apiserver, etcd, kubectl, helm.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> anyhow::Result<String> {
        let port = std::fs::read_to_string(self.state_dir.join("apiserver.port"))?;
        Ok(format!("https://127.0.0.1:{}", port.trim()))
    }

    /// The API server's loopback port.
    pub fn apiserver_port(&self) -> anyhow::Result<u16> {
        Ok(
            std::fs::read_to_string(self.state_dir.join("apiserver.port"))?
                .trim()
                .parse()?,
        )
    }

    /// The real `kubectl`, built at the control plane's version, pointed at it.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bindir.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The real `helm`, pointed at this control plane.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(self.bindir.join("helm"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Run kubectl and return its stdout; fails with its stderr.
    pub fn kubectl_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.kubectl().args(args).output()?;
        if !output.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// A kube client with the admin identity.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Import an image archive (`docker save` output) into every node's
    /// containerd.
    pub fn load_image(&self, archive: &Path) -> anyhow::Result<()> {
        let output = script(&self.state_dir)
            .arg("load-image")
            .arg(archive)
            .output()?;
        if !output.status.success() {
            bail!(
                "scripts/cluster load-image {} failed:\n{}",
                archive.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Stop every process `up` started, by pid. Idempotent.
    pub fn stop(&self) {
        stop_state_dir(&self.state_dir);
    }

    /// Stop kube-apiserver and start it again on the same port (etcd and its
    /// data stay): every client's watches break and must be re-established.
    pub fn restart_apiserver(&self) -> anyhow::Result<()> {
        let output = script(&self.state_dir).arg("restart-apiserver").output()?;
        if !output.status.success() {
            bail!(
                "scripts/cluster restart-apiserver failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn script(state_dir: &Path) -> Command {
    let mut cmd = Command::new(repo_root().join("scripts/cluster"));
    cmd.env("PORTPLANE_CLUSTER_DIR", state_dir);
    cmd
}

fn stop_state_dir(state_dir: &Path) {
    if state_dir.exists() {
        let _ = script(state_dir).arg("down").output();
    }
}

/// Statics are never dropped, so the shared control plane is stopped from
/// an exit handler, which runs when the test harness returns from main.
fn register_exit_teardown() {
    extern "C" fn teardown() {
        if let Ok(mut dir) = SHARED_STATE_DIR.lock()
            && let Some(dir) = dir.take()
        {
            stop_state_dir(&dir);
            // The temp folder around the state: a static's TempDir is never
            // dropped, so it would stay behind, one per test binary run.
            if let Some(temp) = dir.parent() {
                let _ = std::fs::remove_dir_all(temp);
            }
        }
    }
    // SAFETY: `atexit` only records a function pointer; `teardown` is a plain
    // `extern "C" fn` that touches nothing torn down before exit handlers run.
    #[allow(unsafe_code)]
    unsafe {
        libc::atexit(teardown);
    }
}
