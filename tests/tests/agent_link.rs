//! The agent's link to the controller when the network blackholes it: the
//! real agent reaches the real controller through a relay that can freeze
//! (connections stay open, no byte moves, no FIN). With reports ten minutes
//! apart only the link's HTTP/2 keepalive can notice; it must, within its
//! interval + timeout, and the agent must report again once the network is
//! back.

mod tunnel_support;

use std::time::{Duration, Instant};

use portplane_e2e::agents::{agent_token, write_token};
use portplane_e2e::blackhole::Blackhole;
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, agents_config};
use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, echo_server, linked_config, listen_port};

const SCOPE: &str = "aglink";
const PORT: &str = "aglink-kube-apiserver";

fn last_seen(o: &serde_json::Value) -> Option<String> {
    o["status"]["agents"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == "echo")?["lastSeen"]
        .as_str()
        .map(String::from)
}

#[test]
fn a_blackholed_link_is_noticed_by_keepalive_and_recovers() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let echo = echo_server();
    let target = format!("127.0.0.1:{echo}");
    let controller = Controller::start(
        plane,
        &agents_config(SCOPE, PORT, listen_port(), &target, Some(1200)),
    );
    let relay = Blackhole::start(([127, 0, 0, 1], controller.grpc_port).into()).unwrap();
    let sshd = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = write_token(dir.path(), &agent_token(plane, SCOPE, "echo"));
    let config = linked_config(
        &sshd,
        "echo",
        (PORT, listen_port(), target.clone()),
        &relay.addr().to_string(),
        &token,
        dir.path(),
        "report_interval = \"10m\"\n",
    ) + "[docker]\nenabled = false\n[second_owners]\nenabled = false\n";
    let agent = Agent::start(&config);
    let first = std::panic::catch_unwind(|| {
        scope.wait_oport(PORT, "the agent's first report", |o| last_seen(o).is_some())
    })
    .unwrap_or_else(|_| panic!("agent log:\n{}", agent.log()));
    let first_seen = last_seen(&first);

    relay.set_frozen(true);
    let frozen = Instant::now();
    agent.wait_log("controller unreachable", 1, Duration::from_secs(30));
    let noticed = frozen.elapsed();
    // Keepalive: a PING every 5 s, 5 s to answer (controller_link).
    assert!(
        noticed <= Duration::from_secs(10 + 3),
        "the blackholed link was noticed after {noticed:?}:\n{}",
        agent.log()
    );

    // The network is back: the agent connects anew and reports at once
    // (a new link's first report), long before its next 10-minute tick.
    relay.set_frozen(false);
    let again = std::panic::catch_unwind(|| {
        scope.wait_oport(PORT, "a report over the new link", |o| {
            last_seen(o).is_some() && last_seen(o) != first_seen
        })
    });
    assert!(again.is_ok(), "agent log:\n{}", agent.log());
}
