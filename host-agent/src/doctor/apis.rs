//! The kube API and the Talos API through their forwards, and the files
//! that point kubectl and talosctl at them.

use super::checks::{CHECK_TIMEOUT, Inputs};
use super::{Check, kube_api, talos_tls};
use crate::rewrite;

pub async fn kube(inputs: &Inputs<'_>) -> Vec<Check> {
    const CAT: &str = "kubernetes";
    let config = inputs.config;
    let rewrite_hint = format!(
        "the running agent rewrites it within a second; or once: portplane-agent rewrite --config {}",
        inputs.config_path.display()
    );
    let Some(forward) = config.forward(&config.kubeconfig.forward) else {
        return Vec::new();
    };
    let plan = config.rewrite_plan();
    let path = match rewrite::apply::kubeconfig_path(&plan, inputs.env) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "kubeconfig-points",
                "the kubeconfig points at the kube-apiserver forward",
                e.to_string(),
                rewrite_hint,
            )];
        }
    };
    let target = plan.kube;
    let points_name = format!(
        "{} points cluster {} at {}",
        path.display(),
        config.kubeconfig.cluster,
        target.server
    );
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "kubeconfig-points",
                points_name,
                format!("{}: {e}", path.display()),
                "get it: talosctl kubeconfig",
            )];
        }
    };
    let edited =
        match rewrite::kubeconfig::rewrite(&text, &target, &mut rewrite::apply::port_is_dead) {
            Ok(e) => e,
            Err(e) => {
                return vec![Check::fail(
                    CAT,
                    "kubeconfig-points",
                    points_name,
                    format!("{}: {e}", path.display()),
                    "get it: talosctl kubeconfig",
                )];
            }
        };
    let mut checks = Vec::new();
    checks.push(if edited.changed {
        Check::fail(
            CAT,
            "kubeconfig-points",
            points_name,
            format!(
                "cluster \"{}\" has server {}",
                edited.report.cluster,
                edited.report.previous_server.as_deref().unwrap_or("(none)")
            ),
            rewrite_hint.clone(),
        )
    } else {
        Check::pass(CAT, "kubeconfig-points", points_name)
    });
    checks.push(if edited.report.stale.is_empty() {
        Check::pass(CAT, "kubeconfig-stale", "no stale contexts of older cluster generations")
    } else {
        Check::fail(
            CAT,
            "kubeconfig-stale",
            "no stale contexts of older cluster generations",
            format!(
                "{}: contexts {} point at loopback ports nothing listens on",
                path.display(),
                edited.report.stale.join(", ")
            ),
            format!(
                "remove them: kubectl config delete-context {} (or set [kubeconfig] prune_stale = true and the agent does it)",
                edited.report.stale.join(" ")
            ),
        )
    });
    let name = format!(
        "the kube API answers an authenticated request through {} (TLS verified)",
        forward.listen
    );
    checks.push(
        match tokio::time::timeout(
            CHECK_TIMEOUT,
            kube_api::whoami(&path, &edited.report.cluster, &target.server),
        )
        .await
        {
            Ok(Ok(user)) => Check::pass(CAT, "kube-api", format!("{name}: you are {user}")),
            Ok(Err(e)) => Check::fail(CAT, "kube-api", name, e.to_string(), kube_api::hint(&e)),
            Err(_) => Check::fail(
                CAT,
                "kube-api",
                name,
                format!("no answer within {CHECK_TIMEOUT:?}"),
                "check the vm (ssh) checks above; then `kubectl get nodes` for the same request",
            ),
        },
    );
    checks
}

pub async fn talos(inputs: &Inputs<'_>) -> Vec<Check> {
    const CAT: &str = "talos";
    let config = inputs.config;
    let Some(forward) = config.forward(&config.talosconfig.forward) else {
        return Vec::new();
    };
    let plan = config.rewrite_plan();
    let path = rewrite::apply::talosconfig_path(&plan, inputs.env);
    let target = plan.talos;
    let points_name = format!(
        "{} points context {} at {}",
        path.display(),
        config.talosconfig.context,
        target.endpoint
    );
    let rewrite_hint = format!(
        "the running agent rewrites it within a second; or once: portplane-agent rewrite --config {}",
        inputs.config_path.display()
    );
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "talosconfig-points",
                points_name,
                format!("{}: {e}", path.display()),
                "get it: talosctl config merge, or re-create the cluster",
            )];
        }
    };
    let edited = match rewrite::talosconfig::rewrite(&text, &target) {
        Ok(e) => e,
        Err(e) => {
            return vec![Check::fail(
                CAT,
                "talosconfig-points",
                points_name,
                format!("{}: {e}", path.display()),
                "fix or re-create it: talosctl config merge",
            )];
        }
    };
    let mut checks = vec![if edited.changed {
        Check::fail(
            CAT,
            "talosconfig-points",
            points_name,
            format!(
                "context \"{}\" has endpoints [{}]",
                edited.report.context,
                edited.report.previous_endpoints.join(", ")
            ),
            rewrite_hint,
        )
    } else {
        Check::pass(CAT, "talosconfig-points", points_name)
    }];
    let name = format!(
        "the Talos API completes a TLS handshake through {}",
        forward.listen
    );
    checks.push(
        match tokio::time::timeout(
            CHECK_TIMEOUT,
            talos_tls::handshake(&text, &edited.report.context, forward.listen),
        )
        .await
        {
            Ok(Ok(())) => Check::pass(CAT, "talos-api", name),
            Ok(Err(e)) => Check::fail(
                CAT,
                "talos-api",
                name,
                e.to_string(),
                "check the vm (ssh) checks above; then `talosctl version` for the same connection",
            ),
            Err(_) => Check::fail(
                CAT,
                "talos-api",
                name,
                format!("no handshake within {CHECK_TIMEOUT:?}"),
                "check the vm (ssh) checks above; then `talosctl version`",
            ),
        },
    );
    checks
}
