//! Three real `portplane-agent run` processes (three names, three real
//! ServiceAccount tokens) linked to the real controller on the real control
//! plane: each shows on the operator port (`kubectl get -o wide`); one
//! killed goes stale and Ready follows within the TTL; the controller
//! killed and restarted keeps every entry and the agents reconnect by
//! themselves.
// Test helpers: a failed setup panics the test that called it.
#![allow(clippy::unwrap_used)]

mod tunnel_support;

use std::time::{Duration, Instant};

use portplane_e2e::agents::{agent_token, write_token};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, agents_config, condition};
use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, echo_server, linked_config, listen_port};

const SCOPE: &str = "fleet";
const PORT: &str = "fleet-kube-apiserver";
const TTL_SECONDS: u64 = 3;

fn ready(o: &serde_json::Value) -> (String, String, String) {
    let c = condition(o, "Ready").cloned().unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

fn entry(o: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    o["status"]["agents"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
}

fn last_seen(o: &serde_json::Value, name: &str) -> String {
    entry(o, name).map_or_else(String::new, |e| {
        e["lastSeen"].as_str().unwrap_or_default().to_string()
    })
}

/// Where and how an agent reports.
struct Link<'a> {
    plane: &'a ControlPlane,
    scope: &'a str,
    port: &'a str,
    grpc_port: u16,
    report_interval: &'a str,
}

/// Agent `name`, its forward on a port of its own (three hosts' 127.0.0.1
/// are one here). `ssh_config` replaces the sshd's own, for an agent whose
/// VM is down.
fn start_agent(
    link: &Link,
    sshd: &Sshd,
    name: &str,
    echo: u16,
    ssh_config: Option<&std::path::Path>,
) -> (Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = write_token(dir.path(), &agent_token(link.plane, link.scope, name));
    let mut config = linked_config(
        sshd,
        name,
        (link.port, listen_port(), format!("127.0.0.1:{echo}")),
        &format!("127.0.0.1:{}", link.grpc_port),
        &token,
        dir.path(),
        &format!("report_interval = \"{}\"\n", link.report_interval),
    )
    // Each agent rewrites files of its own.
    .replace("/kubeconfig\"", &format!("/kubeconfig-{name}\""))
    .replace("/talosconfig\"", &format!("/talosconfig-{name}\""))
        + "[docker]\nenabled = false\n[second_owners]\nenabled = false\n";
    if let Some(path) = ssh_config {
        let own = sshd.ssh_config_path().display().to_string();
        assert!(config.contains(&own), "{config}");
        config = config.replace(&own, &path.display().to_string());
    }
    (Agent::start(&config), dir)
}

fn logs(agents: &[(&str, &Agent)], controller: &Controller) -> String {
    let mut text = String::new();
    for (name, agent) in agents {
        text.push_str(&format!("{name}:\n{}\n", agent.log()));
    }
    text + "controller:\n" + &controller.log_text()
}

#[test]
fn three_agents_one_killed_goes_stale_and_a_restarted_controller_keeps_them() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let echo = echo_server();
    let config = agents_config(
        SCOPE,
        PORT,
        listen_port(),
        &format!("127.0.0.1:{echo}"),
        Some(TTL_SECONDS),
    );
    let mut controller = Controller::start(plane, &config);
    let sshd = Sshd::start().unwrap();
    // bravo's and charlie's "VM" is down: their ssh config names a port
    // nothing listens on, so their tunnels report Down with the error.
    let closed = portplane_e2e::free_port().unwrap();
    let down_dir = tempfile::tempdir().unwrap();
    let down_config = down_dir.path().join("ssh.config");
    let text = std::fs::read_to_string(sshd.ssh_config_path()).unwrap();
    let port_line = format!("Port {}\n", sshd.port());
    assert!(text.contains(&port_line), "{text}");
    std::fs::write(
        &down_config,
        text.replace(&port_line, &format!("Port {closed}\n")),
    )
    .unwrap();

    let link = Link {
        plane,
        scope: SCOPE,
        port: PORT,
        grpc_port: controller.grpc_port,
        report_interval: "1s",
    };
    let alpha = start_agent(&link, &sshd, "alpha", echo, None);
    let bravo = start_agent(&link, &sshd, "bravo", echo, Some(&down_config));
    let charlie = start_agent(&link, &sshd, "charlie", echo, Some(&down_config));
    let all_three = std::panic::catch_unwind(|| {
        scope.wait_oport(PORT, "alpha Up, bravo and charlie Down, Ready True", |o| {
            let tunnel = |n: &str| entry(o, n).map(|e| e["tunnel"].clone());
            ready(o).0 == "True"
                && tunnel("alpha") == Some("Up".into())
                && tunnel("bravo") == Some("Down".into())
                && tunnel("charlie") == Some("Down".into())
        })
    });
    let o = all_three.unwrap_or_else(|_| {
        panic!(
            "{}",
            logs(
                &[
                    ("alpha", &alpha.0),
                    ("bravo", &bravo.0),
                    ("charlie", &charlie.0)
                ],
                &controller
            )
        )
    });
    assert_eq!(ready(&o).1, "TunnelUp");
    let wide = scope.kubectl(&["get", "operatorport", PORT, "-o", "wide"]);
    assert!(
        wide.contains("alpha=Up,bravo=Down,charlie=Down"),
        "kubectl get -o wide shows the three agents:\n{wide}"
    );

    // alpha is killed (SIGKILL: no goodbye). Only Down reports stay fresh:
    // Ready turns False within the TTL of alpha's last report (at most a
    // report interval before the kill), naming the others' errors; alpha's
    // entry stays, stale by its lastSeen.
    let (alpha_agent, _alpha_dir) = alpha;
    drop(alpha_agent);
    let killed = Instant::now();
    let o = scope.wait_oport(PORT, "Ready False once alpha is stale", |o| {
        ready(o).0 == "False"
    });
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(TTL_SECONDS + 3),
        "Ready followed after {took:?}, TTL {TTL_SECONDS}s"
    );
    let (_, reason, message) = ready(&o);
    assert_eq!(reason, "TunnelDown");
    assert!(
        message.contains("bravo: Down") && message.contains("charlie: Down"),
        "{message}"
    );
    assert!(
        !message.contains("alpha"),
        "alpha is stale, not Down: {message}"
    );
    let alpha_seen = last_seen(&o, "alpha");
    assert!(!alpha_seen.is_empty(), "alpha's entry is kept: {o}");

    // The controller is killed and restarted on the same port: every entry
    // is still there (alpha's unchanged), and bravo and charlie reconnect by
    // themselves: their lastSeen moves past the restart.
    let before = scope.oport(PORT).unwrap();
    controller.restart();
    let restarted = api_server_now();
    let o = std::panic::catch_unwind(|| {
        scope.wait_oport(
            PORT,
            "bravo and charlie reported to the new controller",
            |o| last_seen(o, "bravo") > restarted && last_seen(o, "charlie") > restarted,
        )
    })
    .unwrap_or_else(|_| {
        panic!(
            "{}",
            logs(&[("bravo", &bravo.0), ("charlie", &charlie.0)], &controller)
        )
    });
    assert_eq!(
        entry(&o, "alpha"),
        entry(&before, "alpha"),
        "alpha's entry across the restart: {o}"
    );
    assert_eq!(ready(&o).0, "False", "{o}");
    for name in ["bravo", "charlie"] {
        let log = if name == "bravo" {
            bravo.0.log()
        } else {
            charlie.0.log()
        };
        assert!(
            log.contains("controller unreachable") || log.contains("controller stream ended"),
            "{name} saw the controller go: {log}"
        );
    }

    // alpha comes back: Ready True again, from the restarted controller.
    let alpha = start_agent(&link, &sshd, "alpha", echo, None);
    let back = std::panic::catch_unwind(|| {
        scope.wait_oport(PORT, "Ready True with alpha back", |o| ready(o).0 == "True")
    });
    assert!(back.is_ok(), "alpha:\n{}", alpha.0.log());
}

/// A tunnel going Down or Up is reported at once, not at the next report:
/// with reports ten minutes apart, only that can move the entry.
#[test]
fn a_tunnel_state_change_is_reported_at_once() {
    const SCOPE: &str = "fleetchg";
    const PORT: &str = "fleetchg-kube-apiserver";
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let echo = echo_server();
    let target = format!("127.0.0.1:{echo}");
    let controller = Controller::start(
        plane,
        &agents_config(SCOPE, PORT, listen_port(), &target, Some(1200)),
    );
    let mut sshd = Sshd::start().unwrap();
    let link = Link {
        plane,
        scope: SCOPE,
        port: PORT,
        grpc_port: controller.grpc_port,
        report_interval: "10m",
    };
    let (agent, _dir) = start_agent(&link, &sshd, "delta", echo, None);
    let tunnel = |o: &serde_json::Value| entry(o, "delta").map(|e| e["tunnel"].clone());
    let up = std::panic::catch_unwind(|| {
        scope.wait_oport(PORT, "delta Up", |o| tunnel(o) == Some("Up".into()))
    });
    assert!(up.is_ok(), "{}", logs(&[("delta", &agent)], &controller));
    sshd.stop();
    let down = std::panic::catch_unwind(|| {
        scope.wait_oport(PORT, "delta Down", |o| tunnel(o) == Some("Down".into()))
    });
    assert!(down.is_ok(), "{}", logs(&[("delta", &agent)], &controller));
    sshd.restart().unwrap();
    scope.wait_oport(PORT, "delta Up again", |o| {
        tunnel(o) == Some("Up".into()) && ready(o).0 == "True"
    });
}

/// Now as the API server writes `lastSeen` (RFC 3339, whole seconds, UTC),
/// so the two compare as strings.
fn api_server_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
