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
