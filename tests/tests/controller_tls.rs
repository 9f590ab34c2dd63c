//! The agents' link over TLS, end to end with real parts: the real helm
//! generates the CA and serving certificate (and keeps them across `helm
//! upgrade`), the real controller serves them, `portplane-agent enroll`
//! fetches the CA and a token, and the real agent reports over TLS. A
//! plaintext client and a client trusting another CA get nowhere.

// Test helpers: a failed setup panics the test that called it.
#![allow(clippy::unwrap_used)]

mod tunnel_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portplane_e2e::agents::{agent_token, up_report};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, scoped_config};
use portplane_e2e::repo_root;
use portplane_e2e::sshd::Sshd;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tunnel_support::{Agent, config_for, listen_port};

const NS: &str = "tlsa";

/// A key of the Secret or ConfigMap, decoded.
fn get(plane: &ControlPlane, kind: &str, name: &str, key: &str) -> String {
    let template = if kind == "secret" {
        format!("{{{{index .data \"{key}\" | base64decode}}}}")
    } else {
        format!("{{{{index .data \"{key}\"}}}}")
    };
    plane
        .kubectl_output(&[
            "get",
            kind,
            name,
            "-n",
            NS,
            "-o",
            &format!("go-template={template}"),
        ])
        .unwrap()
}

fn helm(plane: &ControlPlane, verb: &str) {
    let out = plane
        .helm()
        .args([verb, NS, "-n", NS, "--create-namespace"])
        .arg(repo_root().join("charts/portplane"))
        .args([
            // The CRD is in place already (installed with kubectl by the
            // test's Scope); a chart-owned copy would clash with it.
            "--set",
            "crds.install=false",
            "--set",
            "config.instance=tlsa",
            "--set",
            "config.operatorNamespace=ts-tlsa",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report_over(endpoint: Endpoint, token: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e:?}"))?;
        let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let mut client =
            portplane_proto::v1alpha1::port_inventory_client::PortInventoryClient::with_interceptor(
                channel,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", header.clone());
                    Ok(r)
                },
            );
        tokio::time::timeout(
            Duration::from_secs(10),
            client.report(up_report("panda", "tlsa-kube-apiserver", 1)),
        )
        .await
        .map_err(|_| "report timed out".to_string())?
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
    })
}

fn openssl_ca(dir: &Path) -> String {
    let (key, crt) = (dir.join("other.key"), dir.join("other.crt"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(crt).unwrap()
}

#[test]
fn helm_generated_certificate_is_kept_served_and_verified_by_the_agent() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, NS);
    let _ = plane.kubectl_output(&["create", "namespace", "ts-tlsa"]);
    helm(plane, "install");
    let name = "tlsa-controller";
    let (crt, key, ca) = (
        get(plane, "secret", &format!("{name}-grpc-tls"), "tls.crt"),
        get(plane, "secret", &format!("{name}-grpc-tls"), "tls.key"),
        get(plane, "secret", &format!("{name}-grpc-tls"), "ca.crt"),
    );
    assert!(
        crt.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"),
        "{crt}"
    );
    assert_eq!(
        get(plane, "configmap", &format!("{name}-agent-ca"), "ca.crt").trim(),
        ca.trim(),
        "the ConfigMap publishes the Secret's CA"
    );
    // An upgrade keeps the certificate agents already trust.
    helm(plane, "upgrade");
    assert_eq!(
        get(plane, "secret", &format!("{name}-grpc-tls"), "tls.crt"),
        crt
    );
    assert_eq!(
        get(plane, "secret", &format!("{name}-grpc-tls"), "ca.crt"),
        ca
    );

    // The real controller serves that certificate on loopback.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &crt).unwrap();
    std::fs::write(dir.path().join("tls.key"), &key).unwrap();
    let sshd = Sshd::start().unwrap();
    let listen = listen_port();
    let echo = tunnel_support::echo_server();
    let controller = Controller::start(
        plane,
        &scoped_config(
            NS,
            &format!(
                "operatorPorts:\n- {{name: tlsa-kube-apiserver, local: '127.0.0.1:{listen}', target: '127.0.0.1:{echo}'}}\nagents: {{namespace: {NS}}}\ngrpcTls: {{certFile: '{}', keyFile: '{}'}}\n",
                dir.path().join("tls.crt").display(),
                dir.path().join("tls.key").display()
            ),
        ),
    );
    let url = format!("https://127.0.0.1:{}", controller.grpc_port);
    let token = agent_token(plane, NS, "panda");
    let trusting = |pem: &str| {
        Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .unwrap()
    };
    report_over(trusting(&ca), &token).unwrap_or_else(|e| panic!("TLS report refused: {e}"));
    let other = openssl_ca(dir.path());
    let refused = report_over(trusting(&other), &token);
    assert!(refused.is_err(), "a client trusting another CA got through");
    let plaintext =
        Endpoint::from_shared(format!("http://127.0.0.1:{}", controller.grpc_port)).unwrap();
    assert!(
        report_over(plaintext, &token).is_err(),
        "plaintext got through"
    );

    // The user's path: enroll fetches the CA and a token with the user's
    // kubeconfig, run reports over TLS.
    std::fs::copy(
        plane.kubeconfig(),
        sshd.ssh_config_path().with_file_name("kubeconfig"),
    )
    .unwrap();
    let (token_file, ca_file) = (dir.path().join("agent-token"), dir.path().join("ca.crt"));
    let config = config_for(
        &sshd,
        &[("tlsa-kube-apiserver", listen, format!("127.0.0.1:{echo}"))],
        "",
    )
    .replace("name = \"test\"", "name = \"laptop\"")
    .replace(
        "[kubeconfig]\n",
        "[kubeconfig]\ncluster = \"portplane-local\"\n",
    ) + &format!(
        "[controller]\nendpoint = \"{url}\"\nnamespace = \"{NS}\"\nca_configmap = \"{name}-agent-ca\"\n\
             ca_file = \"{}\"\ntoken_file = \"{}\"\ninventory_cache = \"{}\"\n",
        ca_file.display(),
        token_file.display(),
        dir.path().join("inventory.json").display()
    );
    let enroll_config = dir.path().join("agent.toml");
    std::fs::write(&enroll_config, &config).unwrap();
    let out = Command::new(portplane_e2e::workspace_bin("portplane-agent"))
        .args(["enroll", "--config"])
        .arg(&enroll_config)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "enroll: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("controller CA written to"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap().trim(), ca.trim());

    let agent = Agent::start(&config);
    let o = scope.wait_oport("tlsa-kube-apiserver", "the agent's report over TLS", |o| {
        o["status"]["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == "laptop"))
    });
    assert!(
        o["status"]["agents"].to_string().contains("laptop"),
        "{}",
        agent.log()
    );
}
