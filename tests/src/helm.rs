//! The controller as users install it: the chart in `charts/portplane`,
//! installed by the real `helm` onto the local control plane's real nodes,
//! running the image `make image` built (loaded into the nodes' containerd).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cluster::ControlPlane;
use crate::{free_port, repo_root};

/// Where `make image` saves the controller image (`docker save` archive).
pub const IMAGE_ARCHIVE: &str = "target/image/portplane-controller-amd64.tar";

/// The controller image archive; panics with the command that builds it.
pub fn controller_image_archive() -> PathBuf {
    let path = repo_root().join(IMAGE_ARCHIVE);
    assert!(
        path.exists(),
        "{} is missing; build the controller image first: make image (make test does)",
        path.display()
    );
    path
}

/// A Helm release of the controller on a control plane with nodes.
pub struct HelmController<'a> {
    pub plane: &'a ControlPlane,
    pub release: String,
    pub namespace: String,
    pub http_port: u16,
    pub grpc_port: u16,
}

/// One controller pod as `kubectl get pods` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    /// Under hostNetwork, its node's address (127.0.0.i).
    pub ip: String,
    pub node: String,
    pub ready: bool,
    pub phase: String,
}

impl<'a> HelmController<'a> {
    /// Load the image into every node, then `helm install --wait` with the
    /// values the local nodes need (host network, the loopback API server,
    /// free ports) plus `values` (YAML, merged over them). Fails with helm's
    /// output and the pods' state.
    pub fn install(
        plane: &'a ControlPlane,
        release: &str,
        namespace: &str,
        values: &str,
    ) -> anyhow::Result<HelmController<'a>> {
        plane.load_image(&controller_image_archive())?;
        let c = HelmController {
            plane,
            release: release.into(),
            namespace: namespace.into(),
            http_port: free_port()?,
            grpc_port: free_port()?,
        };
        c.helm("install", values)?;
        Ok(c)
    }

    /// `helm upgrade --wait` with the same local values plus `values`.
    pub fn upgrade(&self, values: &str) -> anyhow::Result<()> {
        self.helm("upgrade", values)
    }

    fn helm(&self, verb: &str, values: &str) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let local = dir.path().join("local-nodes.yaml");
        std::fs::write(
            &local,
            format!(
                "hostNetwork: true\napiServer: {{host: 127.0.0.1, port: {api}}}\n\
                 ports: {{grpc: {grpc}, http: {http}}}\n\
                 image: {{pullPolicy: Never}}\n",
                api = self.plane.apiserver_port()?,
                grpc = self.grpc_port,
                http = self.http_port,
            ),
        )?;
        let extra = dir.path().join("values.yaml");
        std::fs::write(&extra, values)?;
        let out = self
            .plane
            .helm()
            .args([verb, &self.release, "-n", &self.namespace])
            .args(["--create-namespace", "--wait", "--timeout", "180s"])
            .arg(repo_root().join("charts/portplane"))
            .arg("-f")
            .arg(&local)
            .arg("-f")
            .arg(&extra)
            .output()
            .context("running helm")?;
        if !out.status.success() {
            bail!(
                "helm {verb} failed: {}\npods:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.plane
                    .kubectl_output(&["get", "pods", "-n", &self.namespace, "-o", "wide"])
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The Deployment's name (`<release>-controller`).
    pub fn name(&self) -> String {
        format!("{}-controller", self.release)
    }

    /// The controller's pods, sorted by name.
    pub fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let out = self.plane.kubectl_output(&[
            "get",
            "pods",
            "-n",
            &self.namespace,
            "-l",
            &format!("app.kubernetes.io/instance={}", self.release),
            "-o",
            "json",
        ])?;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        let mut pods: Vec<Pod> = list["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|p| Pod {
                name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
                ip: p["status"]["podIP"].as_str().unwrap_or_default().into(),
                node: p["spec"]["nodeName"].as_str().unwrap_or_default().into(),
                phase: p["status"]["phase"].as_str().unwrap_or_default().into(),
                ready: p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                }),
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pods)
    }

    /// GET a path on a pod's health/metrics listener: (status code, body).
    pub fn get(&self, pod: &Pod, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect((pod.ip.as_str(), self.http_port)).ok()?;
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

    /// A metric of one pod (`name` includes labels, if any).
    pub fn metric(&self, pod: &Pod, name: &str) -> Option<f64> {
        let (_, body) = self.get(pod, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Every OperatorPort write of one pod so far; None when its /metrics
    /// does not answer or lacks a counter.
    pub fn writes(&self, pod: &Pod) -> Option<u64> {
        let mut total = 0;
        for kind in ["apply", "status", "delete"] {
            total +=
                self.metric(pod, &format!("portplane_writes_total{{kind=\"{kind}\"}}"))? as u64;
        }
        Some(total)
    }

    /// The pod holding the Lease (its holderIdentity is `<pod>-<pid>`).
    pub fn leader(&self, lease: &str) -> anyhow::Result<Option<String>> {
        let holder = self.plane.kubectl_output(&[
            "get",
            "lease",
            lease,
            "-n",
            &self.namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
            "--ignore-not-found",
        ])?;
        let holder = holder.trim();
        Ok(self
            .pods()?
            .into_iter()
            .find(|p| !holder.is_empty() && holder.starts_with(&format!("{}-", p.name)))
            .map(|p| p.name))
    }

    /// The controller's logs, every pod (for failure messages).
    pub fn logs(&self) -> String {
        self.plane
            .kubectl_output(&[
                "logs",
                "-n",
                &self.namespace,
                "-l",
                &format!("app.kubernetes.io/instance={}", self.release),
                "--prefix",
                "--tail",
                "40",
            ])
            .unwrap_or_else(|e| format!("(no logs: {e})"))
    }
}
