//! The harness control plane is real: the kube client writes, the real
//! kubectl reads back, and the version matches the pinned k8s-openapi feature.

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::repo_root;

#[tokio::test]
async fn kube_client_writes_and_kubectl_reads_back() {
    let plane = ControlPlane::shared();
    let client = plane.client().await.unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("smoke".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let services: Api<Service> = Api::namespaced(client, "smoke");
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("redis".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("NodePort".into()),
            ports: Some(vec![ServicePort {
                port: 6379,
                // The seed's low NodePorts: the harness allows 1-65535.
                node_port: Some(6379),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    services.create(&PostParams::default(), &svc).await.unwrap();

    let out = plane
        .kubectl_output(&[
            "get", "service", "redis", "-n", "smoke", "-o",
            "jsonpath={.spec.type} {.spec.ports[0].port} {.spec.ports[0].nodePort} {.spec.clusterIP}",
        ])
        .unwrap();
    let fields: Vec<&str> = out.split(' ').collect();
    assert_eq!(
        fields[..3],
        ["NodePort", "6379", "6379"],
        "kubectl saw: {out}"
    );
    assert!(
        fields[3].starts_with("10."),
        "a ClusterIP was allocated: {out}"
    );
}

#[tokio::test]
async fn server_version_matches_the_pinned_k8s_openapi_feature() {
    let plane = ControlPlane::shared();
    let client = plane.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();

    let script = std::fs::read_to_string(repo_root().join("scripts/cluster")).unwrap();
    let pinned = script
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .expect("scripts/cluster pins KUBERNETES_VERSION");
    assert_eq!(version.git_version, format!("v{pinned}"));

    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let minor = pinned.split('.').nth(1).unwrap();
    assert!(
        cargo.contains(&format!("\"v1_{minor}\"")),
        "Cargo.toml's k8s-openapi feature must be v1_{minor} to match the control plane"
    );
    assert_eq!(version.minor, minor);
}

#[test]
fn readyz_through_the_real_kubectl() {
    let plane = ControlPlane::shared();
    assert_eq!(
        plane
            .kubectl_output(&["get", "--raw", "/readyz"])
            .unwrap()
            .trim(),
        "ok"
    );
}

/// The shared plane is stopped when its test binary exits, and nothing of
/// it stays: no process, not its temp folder. Runs this very test binary
/// again as a child that only starts the shared plane and prints its state
/// folder.
#[test]
fn the_shared_plane_leaves_nothing_behind() {
    if std::env::var_os("PORTPLANE_SHARED_PLANE_CHILD").is_some() {
        println!("STATE={}", ControlPlane::shared().state_dir().display());
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_shared_plane_leaves_nothing_behind",
            "--nocapture",
        ])
        .env("PORTPLANE_SHARED_PLANE_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = stdout
        .lines()
        .find_map(|l| l.strip_prefix("STATE="))
        .unwrap_or_else(|| panic!("the child printed no state folder:\n{stdout}"));
    let temp = std::path::Path::new(state).parent().unwrap();
    assert!(
        temp.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("portplane-cluster-"),
        "{state}"
    );
    assert!(!temp.exists(), "{} is left behind", temp.display());
    // And no process still runs from it (etcd, kube-apiserver, ...).
    let holders: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(state).then_some(cmdline)
        })
        .collect();
    assert!(holders.is_empty(), "still running: {holders:?}");
}
