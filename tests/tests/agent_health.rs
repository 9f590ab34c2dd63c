//! Tunnel health per host on the real controller and control plane: every
//! agent's entry on the operator port, Ready following the freshest reports
//! under the TTL, and a controller restart (SIGKILL) that keeps the entries.
//! The agents are authenticated gRPC clients with real ServiceAccount tokens.

use std::time::{Duration, Instant};

use portplane_e2e::agents::{agent_client, agent_token, up_report};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, condition, scoped_config};
use portplane_e2e::free_port;
use portplane_proto::v1alpha1 as pb;

const SCOPE: &str = "aghealth";
const PORT: &str = "aghealth-kube-apiserver";
const TTL_SECONDS: u64 = 3;

fn ready(o: &serde_json::Value) -> (String, String, String) {
    let c = condition(o, "Ready").cloned().unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

fn entry<'v>(o: &'v serde_json::Value, name: &str) -> Option<&'v serde_json::Value> {
    o["status"]["agents"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
}

#[test]
fn ready_follows_fresh_reports_and_a_restart_keeps_the_entries() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let local = free_port().unwrap();
    // A resync far away: going stale must wake the controller by itself.
    let config = scoped_config(
        SCOPE,
        &format!(
            "operatorPorts:\n- {{name: {PORT}, local: '127.0.0.1:{local}', target: '10.5.0.2:6443'}}\nagents: {{namespace: {SCOPE}, ttlSeconds: {TTL_SECONDS}}}\n"
        ),
    )
    .replace("resyncSeconds: 2\n", "resyncSeconds: 600\n");
    assert!(config.contains("resyncSeconds: 600"), "{config}");
    let mut controller = Controller::start(plane, &config);
    // No agent has ever reported: Unknown, not True.
    let o = scope.wait_oport(PORT, "Ready Unknown", |o| ready(o).0 == "Unknown");
    assert_eq!(ready(&o).1, "NoAgentReport");

    let panda = agent_token(plane, SCOPE, "panda");
    let mini = agent_token(plane, SCOPE, "mini");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Restart keeps the port.
    let grpc_port = controller.grpc_port;
    let send = |token: &str, report: pb::AgentReport| {
        runtime.block_on(async {
            agent_client(grpc_port, Some(token))
                .await
                .report(report)
                .await
                .unwrap_or_else(|s| panic!("report refused: {s:?}"));
        })
    };
    let down = |agent: &str| {
        let mut r = up_report(agent, PORT, 0);
        r.tunnels[0].state = pb::TunnelState::Down as i32;
        r.tunnels[0].last_error = "ssh: connect to 127.0.0.1:60022: connection refused".into();
        r
    };

    // One Up is enough, whatever the others say.
    send(&panda, up_report("panda", PORT, 2));
    send(&mini, down("mini"));
    let o = scope.wait_oport(PORT, "Ready True with both entries", |o| {
        ready(o).0 == "True" && entry(o, "mini").is_some()
    });
    assert_eq!(ready(&o).1, "TunnelUp");
    let p = entry(&o, "panda").unwrap();
    assert_eq!(
        (
            p["tunnel"].as_str(),
            p["activeConnections"].as_i64(),
            p["version"].as_str()
        ),
        (Some("Up"), Some(2), Some("e2e"))
    );
    assert!(p["lastSeen"].is_string(), "{o}");
    let wide = scope.kubectl(&["get", "operatorport", PORT, "-o", "wide"]);
    assert!(
        wide.contains("mini=Down,panda=Up"),
        "kubectl get -o wide shows the agents:\n{wide}"
    );

    // Nobody reports any more: Unknown within the TTL of the last report
    // (plus the controller's write), with no event to wake it.
    let last_report = Instant::now();
    scope.wait_oport(PORT, "Ready Unknown after the TTL", |o| {
        ready(o).0 == "Unknown"
    });
    let took = last_report.elapsed();
    assert!(
        took <= Duration::from_secs(TTL_SECONDS + 3),
        "stale after {took:?}, TTL {TTL_SECONDS}s"
    );

    // Only a Down report is fresh: False, with the agent's error.
    send(&mini, down("mini"));
    let o = scope.wait_oport(PORT, "Ready False", |o| ready(o).0 == "False");
    let (_, reason, message) = ready(&o);
    assert_eq!(reason, "TunnelDown");
    assert!(
        message.contains("mini: Down (ssh: connect to 127.0.0.1:60022: connection refused)")
            && !message.contains("panda"),
        "{message}"
    );

    // Up again, then the controller is killed and restarted: the entries
    // are still there (stale by lastSeen, not wiped), and the new
    // controller turns Ready Unknown once the TTL has passed.
    send(&panda, up_report("panda", PORT, 5));
    let before = scope.wait_oport(PORT, "Ready True again", |o| {
        ready(o).0 == "True" && entry(o, "panda").is_some_and(|p| p["activeConnections"] == 5)
    });
    controller.restart();
    let after = scope.wait_oport(PORT, "Unknown, written by the restarted controller", |o| {
        ready(o).0 == "Unknown"
    });
    for name in ["panda", "mini"] {
        let (b, a) = (entry(&before, name).unwrap(), entry(&after, name));
        assert_eq!(
            a,
            Some(b),
            "{name}'s entry changed across the restart: {after}"
        );
    }
    // And a report to the new controller lands as usual.
    send(&panda, up_report("panda", PORT, 1));
    scope.wait_oport(PORT, "True after the restart", |o| ready(o).0 == "True");
}
