//! The chart and the CRD: the chart's CRD is exactly what the controller
//! derives from its types, the real helm lints and renders the chart, its
//! schema refuses typos, and the real API server accepts every object
//! (`helm install` without nodes; tests/tests/controller_helm.rs runs the
//! pods on real nodes).

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{CRD_PATH, crd_from_binary, eventually, wait_crd_established};
use portplane_e2e::repo_root;
use std::time::Duration;

#[test]
fn chart_crd_matches_the_controller_types() {
    let derived = crd_from_binary();
    let chart = std::fs::read_to_string(repo_root().join(CRD_PATH)).unwrap();
    assert!(
        derived == chart,
        "{CRD_PATH} drifted from the Rust types; regenerate it:\n  cargo run -p portplane-controller -- crd > {CRD_PATH}"
    );
}

#[test]
fn helm_lint_and_template_render_every_object() {
    let plane = ControlPlane::shared();
    let chart = repo_root().join("charts/portplane");
    let lint = plane.helm().arg("lint").arg(&chart).output().unwrap();
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    let out = plane
        .helm()
        .args(["template", "pp", "-n", "portplane", "--include-crds"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    for kind in [
        "kind: CustomResourceDefinition",
        "kind: Deployment",
        "kind: ServiceAccount",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: Role\n",
        "kind: ConfigMap",
        "kind: Service\n",
        "kind: PodDisruptionBudget",
    ] {
        assert!(
            rendered.contains(kind),
            "helm template lacks {kind:?}:\n{rendered}"
        );
    }
    // Helm never upgrades crds/: the CRD is a template, kept on uninstall.
    assert!(rendered.contains("helm.sh/resource-policy: keep"));
    assert!(rendered.contains("image: \"ghcr.io/portplane/portplane-controller:0.1.0\""));
    assert!(
        rendered.contains("runAsNonRoot: true")
            && rendered.contains("readOnlyRootFilesystem: true")
    );
    // The ConfigMap carries the lease namespace of the release and the
    // operator ports of the seed's contract.
    assert!(
        rendered.contains("namespace: portplane\n      name:")
            || rendered.contains("lease:\n      namespace: portplane"),
        "{rendered}"
    );
    assert!(rendered.contains("local: 127.0.0.1:16443"));
    // Agents are authenticated by TokenReview; that is the controller's only
    // right on authentication.k8s.io.
    assert!(
        rendered.contains("resources: [tokenreviews]\n    verbs: [create]"),
        "{rendered}"
    );
}

#[test]
fn non_default_values_render_and_a_typo_fails_against_the_schema() {
    let plane = ControlPlane::shared();
    let chart = repo_root().join("charts/portplane");
    let digest = format!("sha256:{}", "a".repeat(64));
    let out = plane
        .helm()
        .args(["template", "pp", "-n", "portplane"])
        .arg(&chart)
        .args([
            "--set",
            "hostNetwork=true,apiServer.host=127.0.0.1,apiServer.port=6443",
        ])
        .args([
            "--set",
            "service.tailscale.expose=true,service.tailscale.hostname=portplane",
        ])
        .args([
            "--set",
            &format!("image.digest={digest},replicas=1,crds.install=false"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    assert!(rendered.contains(&format!("ghcr.io/portplane/portplane-controller@{digest}")));
    assert!(
        rendered.contains("hostNetwork: true") && rendered.contains("PORTPLANE_LISTEN_ADDRESS")
    );
    assert!(
        rendered.contains("tailscale.com/expose: \"true\"")
            && rendered.contains("tailscale.com/hostname: portplane")
    );
    assert!(
        !rendered.contains("kind: PodDisruptionBudget"),
        "one replica: no PDB"
    );
    assert!(!rendered.contains("kind: CustomResourceDefinition"));

    for (typo, key) in [
        ("replica=3", "replica"),
        ("config.tailnetDomian=x", "tailnetDomian"),
    ] {
        let out = plane
            .helm()
            .args(["template", "pp"])
            .arg(&chart)
            .args(["--set", typo])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(key),
            "--set {typo}: {err}"
        );
    }
}

#[test]
fn chart_app_version_is_the_workspace_version() {
    let chart = std::fs::read_to_string(repo_root().join("charts/portplane/Chart.yaml")).unwrap();
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .skip_while(|l| *l != "[workspace.package]")
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap();
    assert!(
        chart.contains(&format!("appVersion: {version}")),
        "Chart.yaml appVersion must be {version}: the chart's default image tag is the binary's version"
    );
}

#[test]
fn helm_install_is_accepted_by_the_api_server_and_explain_helps() {
    let plane = ControlPlane::shared();
    let chart = repo_root().join("charts/portplane");
    // The Tailscale operator's namespace exists wherever the chart is useful;
    // the chart grants read access to proxy state Secrets there.
    plane
        .kubectl_output(&["create", "namespace", "tailscale"])
        .unwrap();
    let out = plane
        .helm()
        .args(["install", "pp", "-n", "portplane", "--create-namespace"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let kinds = plane
        .kubectl_output(&[
            "get",
            "deployment,serviceaccount,configmap,service",
            "-n",
            "portplane",
            "-o",
            "name",
        ])
        .unwrap();
    for want in [
        "deployment.apps/pp-controller",
        "serviceaccount/pp-controller",
        "configmap/pp-controller",
        "service/pp-controller",
    ] {
        assert!(kinds.contains(want), "{want} missing:\n{kinds}");
    }
    wait_crd_established(plane);
    // Established means served, not yet published: the apiserver rebuilds
    // its OpenAPI document (which `kubectl explain` reads) asynchronously.
    let explain = eventually(
        Duration::from_secs(60),
        "kubectl explain to know operatorport.spec",
        || plane.kubectl_output(&["explain", "operatorport.spec"]).ok(),
    );
    assert!(
        explain.contains("plane") && explain.contains("Runtime"),
        "{explain}"
    );
    let explain = plane
        .kubectl_output(&["explain", "oport.spec.exposures.fqdnSource"])
        .unwrap();
    assert!(explain.contains("ProxySecret"), "{explain}");
    // The service account may do what the controller needs and no more.
    let can = |verb: &str, what: &str, ns: &str| {
        let out = plane
            .kubectl()
            .args([
                "auth",
                "can-i",
                verb,
                what,
                "-n",
                ns,
                "--as",
                "system:serviceaccount:portplane:pp-controller",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("watch", "services", "default"));
    assert!(can("patch", "operatorports.portplane.dev/status", ""));
    assert!(can("watch", "secrets", "tailscale"));
    assert!(
        !can("get", "secrets", "default"),
        "no Secret access outside the operator namespace"
    );
    assert!(can("update", "leases.coordination.k8s.io", "portplane"));
    assert!(!can("delete", "services", "default"));
}
