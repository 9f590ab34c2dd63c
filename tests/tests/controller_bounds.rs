//! Nothing from outside can make the controller write an object the API
//! server refuses, or hold unbounded data: agent reports are size-capped at
//! the gRPC layer, every string that reaches an OperatorPort is cut with a
//! visible marker, and the reconcile keeps working afterwards.

use portplane_e2e::agents::{agent_client, agent_token};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, condition, scoped_config};
use portplane_proto::v1alpha1 as pb;

fn report(agent: &str, state: pb::TunnelState, last_error: String) -> pb::AgentReport {
    pb::AgentReport {
        agent: agent.into(),
        version: "test".into(),
        tunnels: vec![pb::TunnelReport {
            forward: "bnd-kube-apiserver".into(),
            listen: "127.0.0.1:16443".into(),
            target: "10.5.0.2:6443".into(),
            state: state as i32,
            active_connections: 0,
            last_error,
        }],
        host_ports: Vec::new(),
        second_owners: Vec::new(),
    }
}

/// Before the limits, a report with a 1 MiB `last_error` was accepted, the
/// status write then exceeded the API server's request limit
/// (`ResourceExhausted ... 2227377 vs. 2097152`) and the reconcile failed in
/// a loop.
#[test]
fn a_megabyte_last_error_is_refused_and_long_strings_are_cut_visibly() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "bnd");
    let c = Controller::start(
        plane,
        &scoped_config(
            "bnd",
            "operatorPorts:\n- {name: bnd-kube-apiserver, local: '127.0.0.1:16443', target: '10.5.0.2:6443'}\nagents: {namespace: bnd}\n",
        ),
    );
    s.wait_oport("bnd-kube-apiserver", "published", |_| true);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Each agent authenticates as itself (ServiceAccount
    // portplane-agent-<name>): only the sizes are under test here.
    let tokens = ["huge", "big", "panda"].map(|name| agent_token(plane, "bnd", name));
    runtime.block_on(async {
        let mut huge_client = agent_client(c.grpc_port, Some(&tokens[0])).await;
        let huge = report("huge", pb::TunnelState::Down, "x".repeat(1024 * 1024));
        let refused = huge_client
            .report(huge)
            .await
            .expect_err("a 1 MiB report must be refused");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{refused:?}"
        );
        // Under the request limit but far over the string limit: kept, cut.
        let long = "why ".repeat(50 * 1024);
        agent_client(c.grpc_port, Some(&tokens[1]))
            .await
            .report(report("big", pb::TunnelState::Down, long))
            .await
            .unwrap();
        agent_client(c.grpc_port, Some(&tokens[2]))
            .await
            .report(report("panda", pb::TunnelState::Up, String::new()))
            .await
            .unwrap();
    });

    let o = s.wait_oport("bnd-kube-apiserver", "both agents in status", |o| {
        o["status"]["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    });
    let agents = o["status"]["agents"].as_array().unwrap();
    assert_eq!(agents[0]["name"], "big");
    let last_error = agents[0]["lastError"].as_str().unwrap();
    assert!(last_error.len() <= 1024, "{} bytes", last_error.len());
    assert!(
        last_error.ends_with("… [truncated from 204800 bytes]"),
        "{last_error}"
    );
    assert_eq!(agents[1]["name"], "panda");
    assert_eq!(agents[1]["tunnel"], "Up");

    // A Service with a 60 KiB hostname annotation: the spec keeps a cut,
    // marked copy and the condition says what is wrong in bounded words.
    let hostname = "h".repeat(60 * 1024);
    s.apply(&s.service_yaml(
        "web",
        "ClusterIP",
        &[(8080, None)],
        &[
            ("tailscale.com/expose", "true"),
            ("tailscale.com/hostname", &hostname),
        ],
    ));
    let o = s.wait_oport("bnd.web.8080", "published", |o| {
        condition(o, "InvalidHostname").is_some()
    });
    let kept = o["spec"]["exposures"][0]["hostname"].as_str().unwrap();
    assert!(
        kept.len() <= 253 && kept.contains("truncated from 61440 bytes"),
        "{kept}"
    );
    let message = condition(&o, "InvalidHostname").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(message.len() <= 1024, "{} bytes", message.len());
}
