//! Starting the real `portplane-controller` binary against a control plane,
//! scoped to one test (its own instance label, Service selector, lease and
//! operator namespace), stopped by pid on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::ControlPlane;
use crate::{free_port, repo_root, workspace_bin};

/// Where the chart keeps the CRD.
pub const CRD_PATH: &str = "charts/portplane/files/operatorports.portplane.dev.yaml";

/// `portplane-controller crd`.
pub fn crd_from_binary() -> String {
    let out = Command::new(workspace_bin("portplane-controller"))
        .arg("crd")
        .output()
        .unwrap_or_else(|e| panic!("portplane-controller crd: {e}"));
    assert!(
        out.status.success(),
        "portplane-controller crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_default()
}

/// Install the chart's CRD (server-side apply: idempotent, safe from
/// parallel tests) and wait until it is served.
pub fn install_crd(plane: &ControlPlane) {
    let crd = repo_root().join(CRD_PATH);
    plane
        .kubectl_output(&["apply", "--server-side", "-f", &crd.to_string_lossy()])
        .unwrap_or_else(|e| panic!("{e}"));
    wait_crd_established(plane);
}

/// Wait until the OperatorPort CRD is served, however it was installed.
pub fn wait_crd_established(plane: &ControlPlane) {
    plane
        .kubectl_output(&[
            "wait",
            "--for",
            "condition=established",
            "crd/operatorports.portplane.dev",
            "--timeout",
            "30s",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A running controller process.
pub struct Controller {
    child: Option<Child>,
    pub http_port: u16,
    pub grpc_port: u16,
    pub log: PathBuf,
    config_path: PathBuf,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

/// Config for a controller that only sees Services labelled
/// `portplane-test=<scope>`, owns objects labelled `portplane.dev/instance=<scope>`,
/// holds lease `portplane-<scope>` and reads proxy Secrets from namespace
/// `ts-<scope>`. `extra` is appended verbatim (YAML keys).
pub fn scoped_config(scope: &str, extra: &str) -> String {
    format!(
        "instance: {scope}\nserviceSelector: portplane-test={scope}\noperatorNamespace: ts-{scope}\nlease: {{name: portplane-{scope}, namespace: default, durationSeconds: 4, renewSeconds: 1}}\nresyncSeconds: 2\n{extra}"
    )
}

/// [`scoped_config`] with one operator port `name` (local
/// `127.0.0.1:<local>`, `target` as seen from the SSH server) and agents
/// authenticated in namespace `scope`, stale after `ttl_seconds` (None: the
/// default 30).
pub fn agents_config(
    scope: &str,
    name: &str,
    local: u16,
    target: &str,
    ttl_seconds: Option<u64>,
) -> String {
    let ttl = ttl_seconds.map_or_else(String::new, |t| format!(", ttlSeconds: {t}"));
    scoped_config(
        scope,
        &format!(
            "operatorPorts:\n- {{name: {name}, local: '127.0.0.1:{local}', target: '{target}'}}\n\
             agents: {{namespace: {scope}{ttl}}}\n"
        ),
    )
}

impl Controller {
    /// Start the binary with `config` (YAML) and wait until /readyz is 200.
    pub fn start(plane: &ControlPlane, config: &str) -> Controller {
        Controller::start_with_kubeconfig(config, plane.kubeconfig())
    }

    /// The same, reaching the API server as `kubeconfig` says (for example
    /// through a [`crate::blackhole::Blackhole`]).
    pub fn start_with_kubeconfig(config: &str, kubeconfig: &std::path::Path) -> Controller {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config_path = dir.path().join("controller.yaml");
        let http_port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let grpc_port = free_port().unwrap_or_else(|e| panic!("{e}"));
        let full = format!(
            "{config}\nhttpListen: 127.0.0.1:{http_port}\ngrpcListen: 127.0.0.1:{grpc_port}\n"
        );
        std::fs::write(&config_path, full).unwrap_or_else(|e| panic!("{e}"));
        let mut c = Controller {
            child: None,
            http_port,
            grpc_port,
            log: dir.path().join("controller.log"),
            config_path,
            kubeconfig: kubeconfig.to_path_buf(),
            _dir: dir,
        };
        c.spawn();
        c.wait_ready(Duration::from_secs(30));
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(workspace_bin("portplane-controller"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("KUBECONFIG", &self.kubeconfig)
            // Benchmarks set this to "info": debug logs every agent report.
            .env(
                "RUST_LOG",
                std::env::var("PORTPLANE_CONTROLLER_LOG")
                    .unwrap_or_else(|_| "info,portplane_controller=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start portplane-controller: {e}"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Wait for /readyz (every watch synced).
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "controller not ready after {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    /// SIGKILL, no cleanup (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Start again with the same config and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready(Duration::from_secs(30));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path on the health/metrics listener: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get("127.0.0.1", self.http_port, path)
    }

    /// A metric's value from /metrics (`name` includes labels, if any).
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.get("/metrics")?.1, name)
    }

    /// Every OperatorPort write so far (apply + status + delete). Panics
    /// when /metrics does not answer or lacks a counter: a missing figure
    /// must not read as "no writes".
    pub fn writes(&self) -> u64 {
        ["apply", "status", "delete"]
            .iter()
            .map(|k| {
                let name = format!("portplane_writes_total{{kind=\"{k}\"}}");
                self.metric(&name)
                    .unwrap_or_else(|| panic!("/metrics has no {name}; log:\n{}", self.log_text()))
                    as u64
            })
            .sum()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP/1.1 GET: (status code, body); None when nothing answers.
pub fn http_get(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((host, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// One sample's value in a Prometheus text exposition (`name` with its
/// labels, if any).
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One test's slice of a shared control plane: a Service namespace `<name>`
/// and an operator namespace `ts-<name>`, read and written through the real
/// kubectl.
pub struct Scope<'a> {
    pub plane: &'a ControlPlane,
    pub name: String,
}

impl<'a> Scope<'a> {
    pub fn new(plane: &'a ControlPlane, name: &str) -> Scope<'a> {
        install_crd(plane);
        for ns in [name.to_string(), format!("ts-{name}")] {
            let out = plane
                .kubectl()
                .args(["create", "namespace", &ns])
                .output()
                .unwrap_or_else(|e| panic!("{e}"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || err.contains("AlreadyExists"),
                "create namespace {ns}: {err}"
            );
        }
        Scope {
            plane,
            name: name.into(),
        }
    }

    /// kubectl with the given args; panics with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.plane
            .kubectl_output(args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        let mut child = self
            .plane
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(yaml.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "kubectl apply:\n{yaml}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A Service in this scope (labelled so the scoped controller sees it).
    /// `ports`: (port, nodePort); `annotations`: (key, value).
    pub fn service_yaml(
        &self,
        name: &str,
        type_: &str,
        ports: &[(u16, Option<u16>)],
        annotations: &[(&str, &str)],
    ) -> String {
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{portplane-test: {ns}}}\n",
            ns = self.name
        );
        if !annotations.is_empty() {
            y.push_str("  annotations:\n");
            for (k, v) in annotations {
                y.push_str(&format!("    {k}: {v:?}\n"));
            }
        }
        y.push_str(&format!(
            "spec:\n  type: {type_}\n  selector: {{app: {name}}}\n  ports:\n"
        ));
        for (port, node_port) in ports {
            y.push_str(&format!(
                "  - name: p{port}\n    port: {port}\n    targetPort: {port}\n"
            ));
            if let Some(np) = node_port {
                y.push_str(&format!("    nodePort: {np}\n"));
            }
        }
        y
    }

    /// The OperatorPort as JSON, or None when it does not exist.
    pub fn oport(&self, name: &str) -> Option<serde_json::Value> {
        let out = self
            .plane
            .kubectl()
            .args([
                "get",
                "operatorport",
                name,
                "-o",
                "json",
                "--ignore-not-found",
            ])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Names of the OperatorPorts this scope's controller owns, sorted.
    pub fn oport_names(&self) -> Vec<String> {
        let out = self.kubectl(&[
            "get",
            "operatorports",
            "-l",
            &format!("portplane.dev/instance={}", self.name),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
        names.sort();
        names
    }

    /// Wait until the OperatorPort exists and `check` holds for it.
    pub fn wait_oport(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(Duration::from_secs(30), &format!("{name}: {what}"), || {
            let o = self.oport(name)?;
            if check(&o) {
                Some(o)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
    }

    /// Wait until the OperatorPort is gone.
    /// Wait until OperatorPort `name` has condition `type_` True; the
    /// object and the condition's message.
    pub fn wait_condition(&self, name: &str, type_: &str) -> (serde_json::Value, String) {
        let o = self.wait_oport(name, type_, |o| {
            condition(o, type_).is_some_and(|c| c["status"] == "True")
        });
        let message = condition(&o, type_).map_or_else(String::new, |c| {
            c["message"].as_str().unwrap_or_default().to_string()
        });
        (o, message)
    }

    pub fn wait_gone(&self, name: &str) {
        eventually(Duration::from_secs(30), &format!("{name} deleted"), || {
            if self.oport(name).is_none() {
                Some(())
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
    }
}

/// The status of condition `type_` of an OperatorPort ("True"/"False").
pub fn condition<'v>(o: &'v serde_json::Value, type_: &str) -> Option<&'v serde_json::Value> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}
