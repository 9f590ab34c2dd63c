//! Only authenticated agents write: the real controller, against the real
//! control plane, reviews every bearer token with a TokenReview and binds
//! each ServiceAccount to one agent name. Tokens come from the real API
//! server (`kubectl create token`, `portplane-agent enroll`).

mod tunnel_support;

use portplane_e2e::agents::{
    AUDIENCE, agent_client, agent_token, service_account_token, up_report,
};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, scoped_config};
use portplane_e2e::free_port;
use portplane_proto::v1alpha1 as pb;
use tonic::Code;

const SCOPE: &str = "agauth";
const PORT: &str = "agauth-kube-apiserver";

fn names(o: &serde_json::Value) -> Vec<String> {
    o["status"]["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn tokens_are_reviewed_and_bound_to_one_agent_name() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let local = free_port().unwrap();
    let controller = Controller::start(
        plane,
        &scoped_config(
            SCOPE,
            &format!(
                "operatorPorts:\n- {{name: {PORT}, local: '127.0.0.1:{local}', target: '10.5.0.2:6443'}}\nagents: {{namespace: {SCOPE}}}\n"
            ),
        ),
    );
    scope.wait_oport(PORT, "published", |_| true);

    let good = agent_token(plane, SCOPE, "good");
    let other = agent_token(plane, SCOPE, "other");
    // The API server's default audience, not ours.
    let wrong_audience = service_account_token(plane, SCOPE, "portplane-agent-good", None);
    // Our audience, but not an agent's ServiceAccount.
    let stranger = service_account_token(plane, SCOPE, "stranger", Some(AUDIENCE));
    // An agent's ServiceAccount of the right name in another namespace.
    let elsewhere = agent_token(plane, "default", "good");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let code = |token: Option<&str>, report: pb::AgentReport| {
        runtime.block_on(async {
            let mut client = agent_client(controller.grpc_port, token).await;
            match client.report(report).await {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            }
        })
    };

    // The good agent first, so a refused report that slipped through would
    // show as a change to its entry.
    assert_eq!(code(Some(&good), up_report("good", PORT, 1)), Code::Ok);
    scope.wait_oport(PORT, "the good agent's entry", |o| names(o) == ["good"]);
    let reviews_before = controller.metric("portplane_tokenreviews_total").unwrap();

    let mut foreign = up_report("good", PORT, 42);
    foreign.tunnels[0].state = pb::TunnelState::Down as i32;
    foreign.tunnels[0].last_error = "forged".into();
    let refusals = [
        (
            "no token",
            None,
            up_report("attacker", PORT, 42),
            Code::Unauthenticated,
        ),
        (
            "garbage token",
            Some("abc.def.ghi"),
            up_report("attacker", PORT, 42),
            Code::Unauthenticated,
        ),
        (
            "wrong audience",
            Some(wrong_audience.as_str()),
            up_report("good", PORT, 42),
            Code::Unauthenticated,
        ),
        (
            "another agent claiming good",
            Some(other.as_str()),
            foreign.clone(),
            Code::PermissionDenied,
        ),
        (
            "another agent claiming a new name",
            Some(other.as_str()),
            up_report("attacker", PORT, 42),
            Code::PermissionDenied,
        ),
        (
            "not an agent ServiceAccount",
            Some(stranger.as_str()),
            up_report("stranger", PORT, 42),
            Code::PermissionDenied,
        ),
        (
            "agent ServiceAccount in another namespace",
            Some(elsewhere.as_str()),
            foreign.clone(),
            Code::PermissionDenied,
        ),
    ];
    for (what, token, report, want) in refusals {
        assert_eq!(code(token, report), want, "{what}");
    }
    // WatchInventory is refused the same way: the inventory is not for strangers.
    let watch = runtime.block_on(async {
        let mut client = agent_client(controller.grpc_port, None).await;
        client
            .watch_inventory(pb::WatchInventoryRequest { agent: "x".into() })
            .await
            .err()
            .map(|s| s.code())
    });
    assert_eq!(watch, Some(Code::Unauthenticated));

    // A legitimate report of the other agent, after every refused one: once
    // it shows, the refused ones would have shown too.
    assert_eq!(code(Some(&other), up_report("other", PORT, 3)), Code::Ok);
    let o = scope.wait_oport(PORT, "the other agent's entry", |o| {
        names(o).contains(&"other".to_string())
    });
    assert_eq!(names(&o), ["good", "other"], "{o}");
    let good_entry = &o["status"]["agents"][0];
    assert_eq!(
        (
            good_entry["tunnel"].as_str(),
            good_entry["activeConnections"].as_i64()
        ),
        (Some("Up"), Some(1)),
        "a refused report changed the good agent's entry: {o}"
    );

    // Cached: more reports with known tokens cost no TokenReview.
    let reviews_after_refusals = controller.metric("portplane_tokenreviews_total").unwrap();
    for i in 0..20 {
        assert_eq!(
            code(Some(&good), up_report("good", PORT, 1 + i % 2)),
            Code::Ok
        );
    }
    assert_eq!(
        controller.metric("portplane_tokenreviews_total").unwrap(),
        reviews_after_refusals,
        "20 reports with a cached token sent TokenReviews"
    );
    // One review per distinct token that reached the API server (the
    // headerless call never does): garbage, wrong audience, other,
    // stranger, elsewhere.
    assert_eq!(reviews_after_refusals - reviews_before, 5.0);
    assert_eq!(
        controller.metric("portplane_agent_calls_refused_total{code=\"permission_denied\"}"),
        Some(4.0)
    );

    let log = controller.log_text();
    for token in [&good, &other, &wrong_audience, &stranger, &elsewhere] {
        assert!(
            !log.contains(token.as_str()),
            "a token reached the controller log"
        );
    }
    assert!(log.contains("agent call refused"), "{log}");
}

/// The whole path a user takes: `portplane-agent run` holds the tunnel to
/// the real API server and rewrites the kubeconfig (no credential yet: the
/// controller refuses it, the tunnel does not care); `portplane-agent
/// enroll` goes through that tunnel with the user's kubeconfig, creates the
/// ServiceAccount and writes a token; the running agent picks the token up
/// on its next reconnect, without a restart, and its report lands.
#[test]
fn enroll_through_the_tunnel_and_the_running_agent_picks_the_token_up() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    use tunnel_support::{Agent, config_for, listen_port, wait_until};

    const SCOPE: &str = "agenroll";
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let sshd = portplane_e2e::sshd::Sshd::start().unwrap();
    let listen = listen_port();
    let apiserver = format!("127.0.0.1:{}", plane.apiserver_port().unwrap());
    let port = format!("{SCOPE}-kube-apiserver");
    let controller = Controller::start(
        plane,
        &scoped_config(
            SCOPE,
            &format!(
                "operatorPorts:\n- {{name: {port}, local: '127.0.0.1:{listen}', target: '{apiserver}'}}\nagents: {{namespace: {SCOPE}, ttlSeconds: 3}}\n"
            ),
        ),
    );

    // The user's kubeconfig, as the agent config names it.
    let kubeconfig = sshd.ssh_config_path().with_file_name("kubeconfig");
    std::fs::copy(plane.kubeconfig(), &kubeconfig).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("portplane/agent-token");
    let config = config_for(&sshd, &[(port.as_str(), listen, apiserver.clone())], "")
        .replace("name = \"test\"", "name = \"laptop\"")
        .replace(
            "[kubeconfig]\n",
            "[kubeconfig]\ncluster = \"portplane-local\"\n",
        )
        + &format!(
            "[controller]\nendpoint = \"http://127.0.0.1:{}\"\nnamespace = \"{SCOPE}\"\ntoken_file = \"{}\"\ninventory_cache = \"{}\"\n",
            controller.grpc_port,
            token.display(),
            dir.path().join("inventory.json").display()
        );
    let agent = Agent::start(&config);
    wait_until(
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&kubeconfig)
                .is_ok_and(|k| k.contains(&format!("server: https://127.0.0.1:{listen}")))
        },
        || format!("kubeconfig never rewritten:\n{}", agent.log()),
    );
    agent.wait_log(
        "cannot read the controller token",
        1,
        Duration::from_secs(30),
    );

    let enroll = || {
        let out = std::process::Command::new(portplane_e2e::workspace_bin("portplane-agent"))
            .args(["enroll", "--config"])
            .arg(agent.config_path())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = enroll();
    assert!(
        first.contains(&format!(
            "ServiceAccount {SCOPE}/portplane-agent-laptop (created)"
        )),
        "{first}"
    );
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "token file mode");
    let written = std::fs::read_to_string(&token).unwrap();

    // No restart: the agent reads the new file when it reconnects.
    let o = scope.wait_oport(&port, "the enrolled agent's report", |o| {
        names(o) == ["laptop"] && o["status"]["agents"][0]["tunnel"] == "Up"
    });
    assert_eq!(o["status"]["agents"][0]["name"], "laptop");

    // Enrolling again reuses the ServiceAccount and rotates the token.
    let second = enroll();
    assert!(second.contains("(reused)"), "{second}");
    assert_ne!(std::fs::read_to_string(&token).unwrap(), written);

    for log in [agent.log(), controller.log_text()] {
        assert!(!log.contains(written.trim()), "a token reached a log");
    }

    // The agent dies: its entry stays, stale, and Ready leaves True.
    drop(agent);
    let o = scope.wait_oport(&port, "Ready Unknown once the agent is gone", |o| {
        portplane_e2e::controller::condition(o, "Ready").is_some_and(|c| c["status"] == "Unknown")
    });
    assert_eq!(names(&o), ["laptop"]);
}
