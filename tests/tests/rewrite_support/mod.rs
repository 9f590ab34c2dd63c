//! Shared by the rewrite_* end-to-end tests: the real `portplane-agent run`
//! under a Drop guard, the real kubectl, and a kubeconfig written by kubectl
//! the way `talosctl cluster create` leaves it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::free_port;
use portplane_e2e::sshd::Sshd;
use portplane_e2e::workspace_bin;

/// `portplane-agent run`, killed by pid and reaped on drop.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, config: &str) -> Agent {
        let path = dir.join("agent.toml");
        fs::write(&path, config).unwrap();
        let log = dir.join("agent.log");
        let child = Command::new(workspace_bin("portplane-agent"))
            .args(["run", "--config"])
            .arg(&path)
            .env("HOME", dir)
            .env_remove("KUBECONFIG")
            .env_remove("TALOSCONFIG")
            .env("RUST_LOG", "info,portplane_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(what: &str, timeout: Duration, agent: &Agent, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {what}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real kubectl on `kubeconfig`; Ok(stdout) or Err(stderr).
pub fn kubectl(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cp.bindir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A field of the harness's admin kubeconfig, e.g.
/// `{.users[0].user.client-key-data}`.
pub fn admin_credential(cp: &ControlPlane, jsonpath: &str) -> String {
    cp.kubectl_output(&[
        "config",
        "view",
        "--raw",
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
    .unwrap()
}

/// A kubeconfig as `talosctl cluster create` leaves it after a re-create,
/// written with `kubectl config`: `joelclaw` (dead port) and `joelclaw-1`
/// (the VM's old published port, also dead now), with the harness's CA and
/// admin credentials.
pub fn user_kubeconfig(cp: &ControlPlane, path: &Path) {
    let raw = |jsonpath: &str| admin_credential(cp, jsonpath);
    let ca = raw("{.clusters[0].cluster.certificate-authority-data}");
    let cert = raw("{.users[0].user.client-certificate-data}");
    let key = raw("{.users[0].user.client-key-data}");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    for generation in ["joelclaw", "joelclaw-1"] {
        add_generation(cp, path, generation, &ca, &cert, &key);
    }
    kubectl(cp, path, &["config", "use-context", "admin@joelclaw-1"]).unwrap();
}

/// A home folder as the user has it: `~/.kube/config` from
/// [`user_kubeconfig`] and `~/.talos/config` as talosctl left it. Returns the
/// folder and the kubeconfig's path.
pub fn user_home(cp: &ControlPlane) -> (tempfile::TempDir, std::path::PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join(".kube/config");
    user_kubeconfig(cp, &kubeconfig);
    fs::create_dir_all(home.path().join(".talos")).unwrap();
    fs::write(home.path().join(".talos/config"), TALOSCONFIG).unwrap();
    (home, kubeconfig)
}

pub fn add_generation(cp: &ControlPlane, path: &Path, name: &str, ca: &str, cert: &str, key: &str) {
    let dead = free_port().unwrap();
    let user = format!("admin@{name}");
    for args in [
        vec![
            "config".to_string(),
            "set-cluster".into(),
            name.into(),
            format!("--server=https://127.0.0.1:{dead}"),
        ],
        vec![
            "config".into(),
            "set".into(),
            format!("clusters.{name}.certificate-authority-data"),
            ca.into(),
        ],
        vec![
            "config".into(),
            "set".into(),
            format!("users.{user}.client-certificate-data"),
            cert.into(),
        ],
        vec![
            "config".into(),
            "set".into(),
            format!("users.{user}.client-key-data"),
            key.into(),
        ],
        vec![
            "config".into(),
            "set-context".into(),
            user.clone(),
            format!("--cluster={name}"),
            format!("--user={user}"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl(cp, path, &args).unwrap();
    }
}

pub fn server_of(cp: &ControlPlane, kubeconfig: &Path, cluster: &str) -> String {
    kubectl(
        cp,
        kubeconfig,
        &[
            "config",
            "view",
            "-o",
            &format!("jsonpath={{.clusters[?(@.name==\"{cluster}\")].cluster.server}}"),
        ],
    )
    .unwrap_or_default()
}

pub fn agent_config(
    sshd: &Sshd,
    kube_listen: u16,
    talos_listen: u16,
    apiserver: u16,
    home: &Path,
) -> String {
    format!(
        "name = \"test\"\n\
         [ssh]\nconfig = \"{}\"\nhost = \"{}\"\n\
         [[forward]]\nname = \"kube-apiserver\"\nlisten = \"127.0.0.1:{kube_listen}\"\ntarget = \"127.0.0.1:{apiserver}\"\n\
         [[forward]]\nname = \"talos-api\"\nlisten = \"127.0.0.1:{talos_listen}\"\ntarget = \"127.0.0.1:{apiserver}\"\n\
         [kubeconfig]\npath = \"{}\"\n\
         [talosconfig]\npath = \"{}\"\n",
        sshd.ssh_config_path().display(),
        sshd.host_alias(),
        home.join(".kube/config").display(),
        home.join(".talos/config").display(),
    )
}

pub const TALOSCONFIG: &str = "context: joelclaw-1\ncontexts:\n    joelclaw-1:\n        endpoints:\n            - 127.0.0.1:63325\n        ca: Y2E=\n        crt: Y3J0\n        key: a2V5\n";
