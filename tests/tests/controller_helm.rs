//! The controller as users run it: `helm install` of charts/portplane onto a
//! control plane with two real nodes (containerd + kubelet), running the
//! image `make image` built. The probes, the security context, in-cluster
//! config, RBAC as the controller really uses it, leader election between two
//! pods, `helm upgrade` and `helm uninstall` are all the real thing.

use std::time::{Duration, Instant};

use portplane_e2e::agents::{agent_token, up_report};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Scope, condition, eventually};
use portplane_e2e::helm::{HelmController, Pod};

const NS: &str = "portplane";
const LEASE: &str = "portplane-helm";

fn values(tailnet: &str) -> String {
    format!(
        "replicas: 2\nconfig:\n  instance: helm\n  serviceSelector: portplane-test=helm\n  \
         operatorNamespace: ts-helm\n  tailnetDomain: {tailnet}\n  resyncSeconds: 30\n  \
         lease: {{name: {LEASE}, durationSeconds: 6, renewSeconds: 1}}\n  operatorPorts:\n  \
         - {{name: helm-kube-apiserver, local: '127.0.0.1:16443', target: '10.5.0.2:6443'}}\n"
    )
}

#[test]
fn helm_installed_controller_runs_on_real_nodes_and_hands_over() {
    let host_before = kubelet_host_state();
    let plane = ControlPlane::start_with_nodes(2).unwrap_or_else(|e| panic!("{e:#}"));

    // Both nodes registered and Ready, at the pinned Kubernetes version.
    let nodes: serde_json::Value = serde_json::from_str(
        &plane
            .kubectl_output(&["get", "nodes", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for node in nodes {
        assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.37.2");
        assert!(
            node["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            "{node}"
        );
    }

    for ns in ["helm", "ts-helm"] {
        plane.kubectl_output(&["create", "namespace", ns]).unwrap();
    }
    let helm = HelmController::install(&plane, "pp", NS, &values("tail7af24.ts.net"))
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Two pods, Running and Ready through their real probes, one per node
    // (each listens on its node's address: 127.0.0.1 and 127.0.0.2).
    let pods = helm.pods().unwrap();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        pods.iter().all(|p| p.ready && p.phase == "Running"),
        "{pods:?}"
    );
    let mut ips: Vec<&str> = pods.iter().map(|p| p.ip.as_str()).collect();
    ips.sort();
    assert_eq!(ips, ["127.0.0.1", "127.0.0.2"], "{pods:?}");
    for pod in &pods {
        assert_eq!(helm.get(pod, "/readyz").map(|(code, _)| code), Some(200));
    }
    // Their logs are kept under the node's own folder (podLogsDir).
    let node_logs = std::fs::read_dir(plane.state_dir().join("node-1/pods"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(node_logs > 0, "no pod logs under node-1/pods");

    // The scenario, against the in-cluster controller and its own
    // ServiceAccount: annotate, re-annotate, conflict, un-annotate.
    let s = Scope {
        plane: &plane,
        name: "helm".into(),
    };
    let expose = [("tailscale.com/expose", "true")];
    s.apply(&s.service_yaml("web", "ClusterIP", &[(80, None)], &expose));
    let o = s.wait_oport("helm.web.80", "published", |o| {
        condition(o, "Ready").is_some_and(|c| c["status"] == "True")
    });
    assert_eq!(
        o["spec"]["exposures"][0]["fqdn"], "helm-web.tail7af24.ts.net",
        "{o}"
    );
    s.kubectl(&[
        "annotate",
        "service",
        "web",
        "-n",
        "helm",
        "tailscale.com/hostname=shop",
    ]);
    s.wait_oport("helm.web.80", "re-annotated", |o| {
        o["spec"]["exposures"][0]["hostname"] == "shop"
    });
    s.apply(&s.service_yaml(
        "api",
        "ClusterIP",
        &[(8080, None)],
        &[
            ("tailscale.com/expose", "true"),
            ("tailscale.com/hostname", "shop"),
        ],
    ));
    s.wait_oport("helm.api.8080", "HostnameConflict", |o| {
        condition(o, "HostnameConflict").is_some_and(|c| c["status"] == "True")
    });
    s.kubectl(&[
        "annotate",
        "service",
        "api",
        "-n",
        "helm",
        "tailscale.com/expose-",
    ]);
    s.wait_gone("helm.api.8080");
    s.wait_oport("helm.web.80", "conflict cleared", |o| {
        condition(o, "HostnameConflict").is_none()
    });
    s.wait_oport("helm-kube-apiserver", "operator port declared", |_| true);

    // Only the lease holder writes.
    let leader = helm.leader(LEASE).unwrap().expect("a pod holds the lease");
    let (leading, standby): (Vec<_>, Vec<_>) = helm
        .pods()
        .unwrap()
        .into_iter()
        .partition(|p| p.name == leader);
    let (leading, standby) = (&leading[0], &standby[0]);
    assert!(helm.writes(leading).unwrap() > 0);
    assert_eq!(
        helm.writes(standby),
        Some(0),
        "the standby wrote; logs:\n{}",
        helm.logs()
    );
    assert_eq!(helm.metric(standby, "portplane_leader"), Some(0.0));

    // An agent reports over the chart's TLS with its own ServiceAccount
    // token: the in-cluster controller reviews it (its tokenreviews RBAC)
    // and writes the tunnel into status. The standby refuses reports.
    let token = agent_token(&plane, NS, "panda");
    let ca = plane
        .kubectl_output(&[
            "get",
            "configmap",
            "pp-controller-agent-ca",
            "-n",
            NS,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .unwrap();
    assert_eq!(
        report_to(leading, helm.grpc_port, &ca, &token),
        Ok(()),
        "the leader refused the report; logs:\n{}",
        helm.logs()
    );
    s.wait_oport("helm-kube-apiserver", "panda's tunnel Up, Ready", |o| {
        o["status"]["agents"][0]["name"] == "panda"
            && o["status"]["agents"][0]["tunnel"] == "Up"
            && condition(o, "Ready").is_some_and(|c| c["status"] == "True")
    });
    let refused = report_to(standby, helm.grpc_port, &ca, &token).unwrap_err();
    assert!(
        refused.contains("Unavailable") && refused.contains("standby"),
        "{refused}"
    );

    // The leader's pod is deleted: it releases the lease on SIGTERM and the
    // standby writes within the lease duration.
    plane
        .kubectl_output(&["delete", "pod", &leading.name, "-n", NS, "--wait=false"])
        .unwrap();
    let deleted = Instant::now();
    // Usually the standby takes over; the Deployment's replacement pod may
    // win the race for the released lease instead, which is as good.
    let new_leader = std::panic::catch_unwind(|| {
        eventually(
            Duration::from_secs(30),
            "another replica holds the lease",
            || {
                helm.leader(LEASE)
                    .ok()?
                    .filter(|holder| *holder != leading.name)
            },
        )
    })
    .unwrap_or_else(|_| {
        panic!(
            "no replica took the lease from {}; holder now {:?}; logs:\n{}",
            leading.name,
            helm.leader(LEASE),
            helm.logs()
        )
    });
    let handover = deleted.elapsed();
    assert!(
        handover < Duration::from_secs(6),
        "handover to {new_leader} took {handover:?}, over the 6 s lease; logs:\n{}",
        helm.logs()
    );
    let new_leader = eventually(Duration::from_secs(60), "the new leader's pod", || {
        helm.pods()
            .ok()?
            .into_iter()
            .find(|p| p.name == new_leader && p.ready)
    });
    // The new leader writes (the old one may still be draining, so the
    // change comes after the handover).
    let before = helm.writes(&new_leader).unwrap();
    s.apply(&s.service_yaml("late", "ClusterIP", &[(81, None)], &expose));
    s.wait_oport("helm.late.81", "written by the new leader", |_| true);
    eventually(
        Duration::from_secs(10),
        "the new leader's writes counted",
        || (helm.writes(&new_leader)? > before).then_some(()),
    );
    // The Deployment replaces the pod; both Ready again.
    eventually(Duration::from_secs(120), "two Ready pods again", || {
        let pods = helm.pods().ok()?;
        (pods.len() == 2
            && pods.iter().all(|p| p.ready)
            && !pods.iter().any(|p| p.name == leading.name))
        .then_some(())
    });

    // `helm upgrade` with a changed value rolls both pods and takes effect.
    let before: Vec<String> = helm.pods().unwrap().into_iter().map(|p| p.name).collect();
    helm.upgrade(&values("tail0000.ts.net"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // `--wait` returns once the new pods are Ready; an old pod can still be
    // listed for a moment after it exited (phase Succeeded), until the
    // ReplicaSet controller deletes it.
    eventually(
        Duration::from_secs(60),
        "only new, Ready pods after the upgrade",
        || {
            let after = helm.pods().ok()?;
            (!after.is_empty() && after.iter().all(|p| !before.contains(&p.name) && p.ready))
                .then_some(())
        },
    );
    s.wait_oport("helm.late.81", "new tailnet domain", |o| {
        o["spec"]["exposures"][0]["fqdn"] == "helm-late.tail0000.ts.net"
    });

    // `helm uninstall` removes every object the chart made; the CRD stays
    // (resource-policy keep: deleting it would delete every OperatorPort),
    // and so do the OperatorPorts, which describe the cluster, not the release.
    let out = plane
        .helm()
        .args(["uninstall", "pp", "-n", NS, "--wait", "--timeout", "120s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pods go after the Deployment, through the garbage collector and
    // their graceful stop (each releases the lease).
    eventually(Duration::from_secs(60), "the controller pods gone", || {
        helm.pods().ok()?.is_empty().then_some(())
    });
    let left = plane
        .kubectl_output(&[
            "get",
            "deployment,replicaset,pod,serviceaccount,configmap,service,poddisruptionbudget,role,rolebinding",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/instance=pp",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(left.trim(), "", "left behind in {NS}");
    let cluster_left = plane
        .kubectl_output(&[
            "get",
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/instance=pp",
            "-o",
            "name",
        ])
        .unwrap();
    assert_eq!(cluster_left.trim(), "");
    plane
        .kubectl_output(&["get", "crd", "operatorports.portplane.dev"])
        .unwrap();
    assert!(s.oport("helm.web.80").is_some());

    // Stopped, the nodes leave nothing of theirs outside the state folder:
    // no container log links or pod logs, and no /var/lib/kubelet (kubelet's
    // device-plugin socket) unless it was there before.
    plane.stop();
    let host_after = kubelet_host_state();
    assert!(
        host_before.0 || !host_after.0,
        "/var/lib/kubelet was made by the nodes and left after `cluster down`"
    );
    let left: Vec<_> = host_after.1.difference(&host_before.1).collect();
    assert!(left.is_empty(), "left outside the state folder: {left:?}");
}

/// Whether /var/lib/kubelet exists, and the entries of /var/log/containers
/// and /var/log/pods: where a kubelet writes whatever its --root-dir.
fn kubelet_host_state() -> (bool, std::collections::BTreeSet<std::path::PathBuf>) {
    let mut entries = std::collections::BTreeSet::new();
    for dir in ["/var/log/containers", "/var/log/pods"] {
        if let Ok(read) = std::fs::read_dir(dir) {
            entries.extend(read.flatten().map(|e| e.path()));
        }
    }
    (std::path::Path::new("/var/lib/kubelet").exists(), entries)
}

/// One report of agent "panda" to `pod` over TLS (the chart's CA; the
/// certificate names localhost, not the pod's loopback address) with
/// `token`; the gRPC status as text on refusal.
fn report_to(pod: &Pod, port: u16, ca: &str, token: &str) -> Result<(), String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}:{port}", pod.ip))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e:?}", pod.name))?;
        let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("token as header: {e}"))?;
        let mut client =
            portplane_proto::v1alpha1::port_inventory_client::PortInventoryClient::with_interceptor(
                channel,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", header.clone());
                    Ok(r)
                },
            );
        client
            .report(up_report("panda", "helm-kube-apiserver", 1))
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}"))
    })
}
