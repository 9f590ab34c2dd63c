//! Golden before/after files: realistic kubeconfig and talosconfig (as
//! `talosctl cluster create` and `kubectl config` write them, two
//! generations of the cluster, extra users, extensions) rewritten by the
//! pure edit functions. `UPDATE_GOLDEN=1` rewrites the expected files; review
//! the diff before committing.
#![allow(clippy::unwrap_used)]

use portplane_agent::rewrite::kubeconfig::{self, KubeTarget};
use portplane_agent::rewrite::talosconfig::{self, TalosTarget};

mod fixtures_support;
use fixtures_support::{fixture, fixture_path};

fn golden(name: &str, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(fixture_path(name), actual).unwrap();
    }
    let expected = fixture(name);
    assert!(
        expected == actual,
        "{name} differs:\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

fn kube_target() -> KubeTarget {
    KubeTarget {
        cluster: "joelclaw".into(),
        server: "https://127.0.0.1:16443".into(),
        tls_server_name: None,
        insecure_skip_tls_verify: false,
        prune_stale: false,
    }
}

/// Port 63324 (the seed's dead `admin@joelclaw`) is dead; the rest answer.
fn dead_63324(_host: &str, port: u16) -> bool {
    port == 63324
}

#[test]
fn kubeconfig_newest_generation_gets_the_forward_and_keeps_its_ca() {
    let before = fixture("kubeconfig.two-generations.yaml");
    let out = kubeconfig::rewrite(&before, &kube_target(), &mut dead_63324).unwrap();
    assert!(out.changed);
    assert_eq!(out.report.cluster, "joelclaw-1");
    assert_eq!(
        out.report.previous_server.as_deref(),
        Some("https://127.0.0.1:64213")
    );
    assert_eq!(out.report.stale, ["admin@joelclaw"]);
    assert!(out.report.pruned.is_empty());
    // The fixture's current-context is still the old generation's.
    assert!(
        out.report
            .warnings
            .iter()
            .any(|w| w.starts_with("current-context \"admin@joelclaw\" uses an older generation")),
        "{:?}",
        out.report.warnings
    );
    golden("kubeconfig.two-generations.rewritten.yaml", &out.text);
    // Exactly one line differs.
    let diff: Vec<_> = before
        .lines()
        .zip(out.text.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(
        diff,
        [(
            "    server: https://127.0.0.1:64213",
            "    server: https://127.0.0.1:16443"
        )]
    );
}

#[test]
fn kubeconfig_insecure_only_when_asked_and_then_without_the_ca() {
    let before = fixture("kubeconfig.two-generations.yaml");
    let target = KubeTarget {
        insecure_skip_tls_verify: true,
        ..kube_target()
    };
    let out = kubeconfig::rewrite(&before, &target, &mut dead_63324).unwrap();
    golden("kubeconfig.two-generations.insecure.yaml", &out.text);
    let cluster = section(&out.text, "  name: joelclaw-1");
    assert!(
        cluster.contains("insecure-skip-tls-verify: true"),
        "{cluster}"
    );
    assert!(!cluster.contains("certificate-authority"), "{cluster}");
    // The other clusters keep their CA.
    assert_eq!(out.text.matches("certificate-authority-data:").count(), 2);
}

#[test]
fn kubeconfig_tls_server_name_when_the_listen_address_is_not_a_san() {
    let before = fixture("kubeconfig.two-generations.yaml");
    let target = KubeTarget {
        server: "https://127.0.0.2:16443".into(),
        tls_server_name: Some("10.5.0.2".into()),
        ..kube_target()
    };
    let out = kubeconfig::rewrite(&before, &target, &mut dead_63324).unwrap();
    golden("kubeconfig.two-generations.tls-server-name.yaml", &out.text);
    let cluster = section(&out.text, "  name: joelclaw-1");
    assert!(cluster.contains("certificate-authority-data:"));
    assert!(cluster.contains("tls-server-name: 10.5.0.2"), "{cluster}");
}

#[test]
fn kubeconfig_prunes_the_dead_generation_only_when_asked() {
    let before = fixture("kubeconfig.two-generations.yaml");
    let target = KubeTarget {
        prune_stale: true,
        ..kube_target()
    };
    let out = kubeconfig::rewrite(&before, &target, &mut dead_63324).unwrap();
    assert_eq!(out.report.pruned, ["admin@joelclaw"]);
    assert!(out.report.warnings.is_empty(), "{:?}", out.report.warnings);
    golden("kubeconfig.two-generations.pruned.yaml", &out.text);
    assert!(!out.text.contains("name: admin@joelclaw\n"));
    assert!(!out.text.contains("name: joelclaw\n"));
    assert!(
        out.text.contains("current-context: admin@joelclaw-1\n"),
        "was the pruned context"
    );
    assert!(
        out.text.contains("name: minikube"),
        "unrelated entries stay"
    );
    // A live old generation is not stale.
    let out = kubeconfig::rewrite(&before, &target, &mut |_: &str, _: u16| false).unwrap();
    assert!(out.report.stale.is_empty() && out.report.pruned.is_empty());
}

#[test]
fn kubeconfig_second_run_changes_nothing() {
    let before = fixture("kubeconfig.two-generations.yaml");
    let once = kubeconfig::rewrite(&before, &kube_target(), &mut dead_63324).unwrap();
    let twice = kubeconfig::rewrite(&once.text, &kube_target(), &mut dead_63324).unwrap();
    assert!(!twice.changed);
    assert_eq!(once.text, twice.text);
}

#[test]
fn talosconfig_newest_context_gets_endpoint_and_node() {
    let before = fixture("talosconfig.two-generations.yaml");
    let target = TalosTarget {
        context: "joelclaw".into(),
        endpoint: "127.0.0.1:15000".into(),
        node: "10.5.0.2".into(),
    };
    let out = talosconfig::rewrite(&before, &target).unwrap();
    assert!(out.changed);
    assert_eq!(out.report.context, "joelclaw-1");
    assert_eq!(out.report.previous_endpoints, ["127.0.0.1:63325"]);
    golden("talosconfig.two-generations.rewritten.yaml", &out.text);
    assert!(out.report.warnings.is_empty());
    let old_current = before.replace("context: joelclaw-1\n", "context: joelclaw\n");
    let warned = talosconfig::rewrite(&old_current, &target).unwrap();
    assert!(
        warned.report.warnings[0].contains("\"joelclaw\" is an older generation"),
        "{:?}",
        warned.report.warnings
    );
    let again = talosconfig::rewrite(&out.text, &target).unwrap();
    assert!(!again.changed);
    assert_eq!(again.text, out.text);
}

#[test]
fn missing_cluster_and_malformed_files_name_the_line() {
    let err = kubeconfig::rewrite(
        "apiVersion: v1\nclusters: []\n",
        &kube_target(),
        &mut dead_63324,
    )
    .unwrap_err();
    assert!(
        err.problem.contains("no cluster named \"joelclaw\""),
        "{err}"
    );
    let err = kubeconfig::rewrite(
        "apiVersion: v1\nclusters:\n- cluster:\n    server: https://x\n  name: [joelclaw\n",
        &kube_target(),
        &mut dead_63324,
    )
    .unwrap_err();
    assert!(err.line >= 5, "{err}");
    let err = kubeconfig::rewrite(
        "apiVersion: v1\nclusters: joelclaw\n",
        &kube_target(),
        &mut dead_63324,
    )
    .unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(err.problem.contains("`clusters`: expected a list"), "{err}");
}

/// The lines of the list item whose line `marker` ends it.
fn section<'t>(text: &'t str, marker: &str) -> &'t str {
    let end = text.find(marker).unwrap();
    let start = text[..end].rfind("\n- ").unwrap();
    &text[start..end]
}

#[test]
fn a_json_kubeconfig_stays_json() {
    // kubectl reads JSON kubeconfigs too (they are YAML flow style).
    let before = r#"{
  "apiVersion": "v1",
  "kind": "Config",
  "clusters": [
    {"name": "joelclaw", "cluster": {"server": "https://127.0.0.1:63324", "certificate-authority-data": "Y2E="}}
  ],
  "contexts": [{"name": "admin@joelclaw", "context": {"cluster": "joelclaw", "user": "admin@joelclaw"}}],
  "users": [{"name": "admin@joelclaw", "user": {"token": "t"}}]
}
"#;
    let out = kubeconfig::rewrite(before, &kube_target(), &mut |_: &str, _: u16| false).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out.text).unwrap();
    assert_eq!(
        json["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:16443"
    );
    assert_eq!(out.text, before.replace("63324", "16443"));
}

/// A cluster with a valid CA and a stray `insecure-skip-tls-verify: true`
/// (the agent not asked for it): kubectl refuses that pair. Before: both
/// were left, with a warning that the CA should be restored although it was
/// there. Now the flag goes, the CA stays, and the warning says so.
#[test]
fn kubeconfig_with_a_ca_and_a_stray_insecure_flag_is_made_acceptable() {
    let before = fixture("kubeconfig.two-generations.yaml").replace(
        "    server: https://127.0.0.1:64213\n",
        "    server: https://127.0.0.1:64213\n    insecure-skip-tls-verify: true\n",
    );
    assert!(
        before.contains("insecure-skip-tls-verify"),
        "fixture changed"
    );
    let out = kubeconfig::rewrite(&before, &kube_target(), &mut dead_63324).unwrap();
    assert!(
        !out.text.contains("insecure-skip-tls-verify"),
        "{}",
        out.text
    );
    assert_eq!(
        out.text.matches("certificate-authority-data").count(),
        before.matches("certificate-authority-data").count()
    );
    let warning = out
        .report
        .warnings
        .iter()
        .find(|w| w.contains("insecure-skip-tls-verify"))
        .unwrap();
    assert!(
        warning.contains("removed insecure-skip-tls-verify and kept the CA"),
        "{warning}"
    );
    assert!(!warning.contains("restore"), "{warning}");
}

/// kubectl accepts a kubeconfig written as JSON. A listen address other
/// than 127.0.0.1 adds `tls-server-name`; before, that failed with
/// "expected a block mapping" and the cluster stayed on its dead port.
#[test]
fn a_json_kubeconfig_gets_every_edit_and_stays_json() {
    let yaml: yaml_serde::Value =
        yaml_serde::from_str(&fixture("kubeconfig.two-generations.yaml")).unwrap();
    let before = serde_json::to_string_pretty(&yaml).unwrap();
    let target = KubeTarget {
        server: "https://127.0.0.2:16443".into(),
        tls_server_name: Some("127.0.0.1".into()),
        ..kube_target()
    };
    let out = kubeconfig::rewrite(&before, &target, &mut dead_63324).unwrap();
    let json: serde_json::Value = serde_json::from_str(&out.text).expect(&out.text);
    let cluster = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "joelclaw-1")
        .unwrap();
    assert_eq!(cluster["cluster"]["server"], "https://127.0.0.2:16443");
    assert_eq!(cluster["cluster"]["tls-server-name"], "127.0.0.1");
}
