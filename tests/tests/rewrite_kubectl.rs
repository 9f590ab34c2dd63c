//! `portplane-agent run` rewrites a kubeconfig written by the real kubectl
//! (two generations of `joelclaw`, as `talosctl cluster create` leaves them)
//! and the real kubectl then reaches the real kube-apiserver through the
//! agent's tunnel over the real sshd, with TLS verified. Concurrent kubectl
//! writes survive; a re-created cluster generation is followed; a malformed
//! kubeconfig is left alone while the tunnel still comes up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::sshd::Sshd;
use portplane_e2e::{free_port, workspace_bin};
use rewrite_support::{
    Agent, TALOSCONFIG, add_generation, admin_credential, agent_config, kubectl, server_of,
    user_home, user_kubeconfig, wait_until,
};

mod rewrite_support;

#[test]
fn kubectl_reaches_the_apiserver_through_the_tunnel_with_the_rewritten_kubeconfig() {
    let cp = ControlPlane::shared();
    let apiserver = cp.apiserver_port().unwrap();
    let sshd = Sshd::start().unwrap();
    let (home, kubeconfig) = user_home(cp);
    let (kube_listen, talos_listen) = (free_port().unwrap(), free_port().unwrap());
    let agent = Agent::start(
        home.path(),
        &agent_config(&sshd, kube_listen, talos_listen, apiserver, home.path()),
    );

    let server = format!("https://127.0.0.1:{kube_listen}");
    wait_until(
        "the kubeconfig rewrite",
        Duration::from_secs(20),
        &agent,
        || server_of(cp, &kubeconfig, "joelclaw-1") == server,
    );
    let text = fs::read_to_string(&kubeconfig).unwrap();
    assert!(!text.contains("insecure-skip-tls-verify"), "{text}");
    assert_eq!(
        text.matches("certificate-authority-data:").count(),
        2,
        "CA kept: {text}"
    );

    // The real kubectl, current context admin@joelclaw-1, TLS verified.
    let mut last = String::new();
    wait_until(
        "kubectl through the tunnel",
        Duration::from_secs(30),
        &agent,
        || match kubectl(
            cp,
            &kubeconfig,
            &["--request-timeout=5s", "get", "namespaces", "-o", "name"],
        ) {
            Ok(out) => out.lines().any(|l| l == "namespace/kube-system"),
            Err(e) => {
                last = e;
                false
            }
        },
    );
    // Verification is really on: a name the certificate does not carry fails.
    let err = kubectl(
        cp,
        &kubeconfig,
        &[
            "--request-timeout=5s",
            "--tls-server-name=not-a-san.invalid",
            "get",
            "namespaces",
        ],
    )
    .unwrap_err();
    assert!(err.contains("x509") || err.contains("certificate"), "{err}");

    // The dead older generation is reported, not pruned (not asked to).
    wait_until("the stale report", Duration::from_secs(5), &agent, || {
        agent.log().contains("admin@joelclaw;")
    });
    assert!(text.contains("name: admin@joelclaw\n"));

    // The agent rewrites the talosconfig after the kubeconfig (each once its
    // file has settled), so it may land a moment later.
    let talos_path = home.path().join(".talos/config");
    let talos_endpoint = format!("- 127.0.0.1:{talos_listen}\n");
    wait_until(
        "the talosconfig rewrite",
        Duration::from_secs(10),
        &agent,
        || fs::read_to_string(&talos_path).is_ok_and(|t| t.contains(&talos_endpoint)),
    );
    let talos = fs::read_to_string(&talos_path).unwrap();
    assert_eq!(
        talos,
        TALOSCONFIG.replace(
            "- 127.0.0.1:63325\n",
            &format!("- 127.0.0.1:{talos_listen}\n        nodes:\n            - 10.5.0.2\n")
        )
    );

    // kubectl writes the file while the agent watches it: every write
    // succeeds (the agent holds kubectl's lock only to write, and has nothing
    // to write) and survives.
    for i in 0..15 {
        kubectl(
            cp,
            &kubeconfig,
            &[
                "config",
                "set-context",
                &format!("extra-{i}"),
                "--cluster=joelclaw-1",
                "--namespace=kube-system",
            ],
        )
        .unwrap_or_else(|e| panic!("kubectl config write {i} failed: {e}"));
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_secs(3));
    let contexts = kubectl(cp, &kubeconfig, &["config", "get-contexts", "-o", "name"]).unwrap();
    for i in 0..15 {
        assert!(
            contexts.lines().any(|l| l == format!("extra-{i}")),
            "extra-{i} lost: {contexts}"
        );
    }
    assert_eq!(server_of(cp, &kubeconfig, "joelclaw-1"), server);

    // talosctl re-creates the cluster: `joelclaw-2` appears; it is followed.
    let raw = |jsonpath: &str| admin_credential(cp, jsonpath);
    add_generation(
        cp,
        &kubeconfig,
        "joelclaw-2",
        &raw("{.clusters[0].cluster.certificate-authority-data}"),
        &raw("{.users[0].user.client-certificate-data}"),
        &raw("{.users[0].user.client-key-data}"),
    );
    wait_until(
        "the new generation rewritten",
        Duration::from_secs(15),
        &agent,
        || server_of(cp, &kubeconfig, "joelclaw-2") == server,
    );
    let out = kubectl(
        cp,
        &kubeconfig,
        &[
            "--context=admin@joelclaw-2",
            "--request-timeout=5s",
            "get",
            "namespaces",
            "-o",
            "name",
        ],
    )
    .unwrap();
    assert!(out.contains("namespace/default"), "{out}");

    // Settled: no rewrite loop.
    let mtime = || fs::metadata(&kubeconfig).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let settled = mtime();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        mtime(),
        settled,
        "kubeconfig rewritten again without a change"
    );
}

#[test]
fn a_malformed_kubeconfig_is_left_alone_and_the_tunnel_still_comes_up() {
    let cp = ControlPlane::shared();
    let apiserver = cp.apiserver_port().unwrap();
    let sshd = Sshd::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join(".kube/config");
    fs::create_dir_all(kubeconfig.parent().unwrap()).unwrap();
    let broken = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:1\n  name: [joelclaw\n";
    fs::write(&kubeconfig, broken).unwrap();
    // No talosconfig at all.
    let kube_listen = free_port().unwrap();
    let agent = Agent::start(
        home.path(),
        &agent_config(
            &sshd,
            kube_listen,
            free_port().unwrap(),
            apiserver,
            home.path(),
        ),
    );
    wait_until(
        "the rewrite warnings",
        Duration::from_secs(20),
        &agent,
        || {
            let log = agent.log();
            log.contains("config not rewritten")
                && log.contains(".talos/config: does not exist")
                && log.contains(".kube/config:5")
        },
    );
    let server = format!("https://127.0.0.1:{kube_listen}");
    wait_until(
        "kubectl through the tunnel",
        Duration::from_secs(30),
        &agent,
        || {
            cp.kubectl()
                .args([
                    "--server",
                    &server,
                    "--request-timeout=5s",
                    "get",
                    "namespaces",
                    "-o",
                    "name",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        },
    );
    assert_eq!(fs::read_to_string(&kubeconfig).unwrap(), broken);
    let names: Vec<_> = fs::read_dir(kubeconfig.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no backup, lock or temp file: {names:?}");
}

#[test]
fn the_agent_takes_the_same_lock_as_kubectl() {
    let cp = ControlPlane::shared();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = home.path().join("config");
    user_kubeconfig(cp, &kubeconfig);
    let talos = home.path().join("talosconfig");
    fs::write(&talos, TALOSCONFIG).unwrap();
    let config = home.path().join("agent.toml");
    fs::write(
        &config,
        format!(
            "[kubeconfig]\npath = \"{}\"\n[talosconfig]\npath = \"{}\"\n",
            kubeconfig.display(),
            talos.display()
        ),
    )
    .unwrap();
    // The agent pauses after writing its temp file, holding the lock.
    let marker = home.path().join("paused");
    let child = Command::new(workspace_bin("portplane-agent"))
        .args(["rewrite", "--config"])
        .arg(&config)
        .env("PORTPLANE_TEST_PAUSE_BEFORE_RENAME", &marker)
        .env_remove("KUBECONFIG")
        .env_remove("TALOSCONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Agent {
        child,
        log: home.path().join("no-log"),
    };
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "never paused");
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = kubectl(
        cp,
        &kubeconfig,
        &[
            "config",
            "set-context",
            "while-locked",
            "--cluster=joelclaw",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("config.lock") && err.contains("file exists"),
        "{err}"
    );
    fs::remove_file(&marker).unwrap();
    // The talosconfig write pauses too; let it through.
    while agent.child.try_wait().unwrap().is_none() {
        let _ = fs::remove_file(&marker);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "agent never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kubectl(
        cp,
        &kubeconfig,
        &["config", "set-context", "after", "--cluster=joelclaw"],
    )
    .unwrap();
    assert_eq!(
        server_of(cp, &kubeconfig, "joelclaw-1"),
        "https://127.0.0.1:16443"
    );
    let contexts = kubectl(cp, &kubeconfig, &["config", "get-contexts", "-o", "name"]).unwrap();
    assert!(contexts.lines().any(|l| l == "after"), "{contexts}");
}

#[test]
fn on_a_loopback_address_the_certificate_does_not_name_tls_is_verified_by_name() {
    let cp = ControlPlane::shared();
    let apiserver = cp.apiserver_port().unwrap();
    let sshd = Sshd::start().unwrap();
    let (home, kubeconfig) = user_home(cp);
    let kube_listen = free_port().unwrap();
    // 127.0.0.2 is loopback but not on the certificate (127.0.0.1,
    // localhost, 10.5.0.2): the rewrite must name the target instead.
    let config = agent_config(
        &sshd,
        kube_listen,
        free_port().unwrap(),
        apiserver,
        home.path(),
    )
    .replace(
        &format!("listen = \"127.0.0.1:{kube_listen}\""),
        &format!("listen = \"127.0.0.2:{kube_listen}\""),
    );
    let agent = Agent::start(home.path(), &config);
    let server = format!("https://127.0.0.2:{kube_listen}");
    wait_until(
        "the kubeconfig rewrite",
        Duration::from_secs(20),
        &agent,
        || server_of(cp, &kubeconfig, "joelclaw-1") == server,
    );
    let text = fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains("    tls-server-name: 127.0.0.1\n"), "{text}");
    assert!(!text.contains("insecure-skip-tls-verify"), "{text}");
    wait_until(
        "kubectl through the tunnel",
        Duration::from_secs(30),
        &agent,
        || {
            kubectl(
                cp,
                &kubeconfig,
                &["--request-timeout=5s", "get", "namespaces", "-o", "name"],
            )
            .is_ok_and(|out| out.contains("namespace/default"))
        },
    );
    // Without the name, the address itself fails verification.
    let err = kubectl(
        cp,
        &kubeconfig,
        &[
            "--request-timeout=5s",
            "--tls-server-name=127.0.0.2",
            "get",
            "namespaces",
        ],
    )
    .unwrap_err();
    assert!(err.contains("x509") || err.contains("certificate"), "{err}");
}

/// Inputs users really have: a kubeconfig that kubectl wrote as JSON, whose
/// cluster carries its CA and a stray `insecure-skip-tls-verify: true`, and a
/// listen address (127.0.0.2) the certificate does not name, so the rewrite
/// must add `tls-server-name` and drop the flag. Before: "expected a block
/// mapping" and the cluster stayed on its dead port; and had it been
/// rewritten, kubectl refuses a CA together with the insecure flag.
#[test]
fn a_json_kubeconfig_with_a_stray_insecure_flag_is_rewritten_into_one_kubectl_accepts() {
    let cp = ControlPlane::shared();
    let apiserver = cp.apiserver_port().unwrap();
    let sshd = Sshd::start().unwrap();
    let (home, kubeconfig) = user_home(cp);
    kubectl(
        cp,
        &kubeconfig,
        &[
            "config",
            "set",
            "clusters.joelclaw-1.insecure-skip-tls-verify",
            "true",
        ],
    )
    .unwrap();
    let json = kubectl(cp, &kubeconfig, &["config", "view", "--raw", "-o", "json"]).unwrap();
    assert!(
        json.contains("\"insecure-skip-tls-verify\": true"),
        "{json}"
    );
    fs::write(&kubeconfig, &json).unwrap();

    let kube_listen = free_port().unwrap();
    let config = agent_config(
        &sshd,
        kube_listen,
        free_port().unwrap(),
        apiserver,
        home.path(),
    )
    .replace(
        &format!("listen = \"127.0.0.1:{kube_listen}\""),
        &format!("listen = \"127.0.0.2:{kube_listen}\""),
    );
    let agent = Agent::start(home.path(), &config);
    let server = format!("https://127.0.0.2:{kube_listen}");
    wait_until(
        "the kubeconfig rewrite",
        Duration::from_secs(20),
        &agent,
        || server_of(cp, &kubeconfig, "joelclaw-1") == server,
    );
    let text = fs::read_to_string(&kubeconfig).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("no longer JSON ({e}):\n{text}"));
    let cluster = parsed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "joelclaw-1")
        .unwrap();
    assert_eq!(cluster["cluster"]["tls-server-name"], "127.0.0.1", "{text}");
    assert!(
        cluster["cluster"]["insecure-skip-tls-verify"].is_null(),
        "{text}"
    );
    assert!(cluster["cluster"]["certificate-authority-data"].is_string());
    wait_until(
        "kubectl through the tunnel",
        Duration::from_secs(30),
        &agent,
        || {
            kubectl(
                cp,
                &kubeconfig,
                &["--request-timeout=5s", "get", "namespaces", "-o", "name"],
            )
            .is_ok_and(|out| out.contains("namespace/default"))
        },
    );
    assert!(
        agent
            .log()
            .contains("removed insecure-skip-tls-verify and kept the CA"),
        "{}",
        agent.log()
    );
}
