//! `portplane-agent run` refuses what it must not do, with a non-zero exit
//! and a message naming the culprit: a listen port already held (and by
//! whom), a non-loopback listen, a forward onto a runtime port, a bad file.

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, config_for, echo_server, listen_port, wait_echo};

fn exits_with(agent: &mut Agent) -> String {
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("agent kept running:\n{}", agent.log()));
    assert!(!status.success(), "exit status {status}:\n{}", agent.log());
    agent.log()
}

#[test]
fn listen_port_already_taken_exits_naming_port_and_holder() {
    let sshd = Sshd::start().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let free = listen_port();
    let mut agent = Agent::start(&config_for(
        &sshd,
        &[
            ("kube-apiserver", free, "127.0.0.1:1".into()),
            ("talos-api", taken, "127.0.0.1:2".into()),
        ],
        "",
    ));
    let log = exits_with(&mut agent);
    assert!(log.contains(&format!("127.0.0.1:{taken}")), "{log}");
    assert!(log.contains("talos-api"), "{log}");
    assert!(
        log.contains(&format!("held by pid {} ", std::process::id())),
        "names this test process as the holder: {log}"
    );
    // Nothing half-up: the other listener is released.
    assert!(std::net::TcpListener::bind(("127.0.0.1", free)).is_ok());
}

#[test]
fn non_loopback_listen_is_refused_at_load() {
    let sshd = Sshd::start().unwrap();
    let text = config_for(
        &sshd,
        &[("kube-apiserver", listen_port(), "127.0.0.1:1".into())],
        "",
    )
    .replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:");
    let mut agent = Agent::start(&text);
    let log = exits_with(&mut agent);
    let path = agent.config_path().display().to_string();
    assert!(
        log.contains(&format!("{path}: `forward[0].listen`")),
        "{log}"
    );
    assert!(log.contains("not a loopback address"), "{log}");
}

#[test]
fn bad_config_value_names_file_key_and_expectation() {
    let mut agent = Agent::start("[ssh]\nkeepalive_interval = \"soon\"\n");
    let log = exits_with(&mut agent);
    let path = agent.config_path().display().to_string();
    assert!(log.contains(&path), "{log}");
    assert!(log.contains("keepalive_interval"), "{log}");
}

#[test]
fn runtime_port_forward_is_refused_and_operator_forward_still_serves() {
    let sshd = Sshd::start().unwrap();
    let echo = echo_server();
    let runtime_listen = listen_port();
    let operator_listen = listen_port();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("inventory.json");
    std::fs::write(
        &cache,
        format!(
            r#"{{"revision": 3, "runtime_ports": [{{"name": "joelclaw.redis.{runtime_listen}",
                "namespace": "joelclaw", "service": "redis", "port": {runtime_listen}}}]}}"#
        ),
    )
    .unwrap();
    // No controller is listening at the endpoint: the rule works from the cache.
    let controller = format!(
        "[controller]\nendpoint = \"http://127.0.0.1:{}\"\ninventory_cache = \"{}\"\n",
        listen_port(),
        cache.display()
    );
    let runtime_only = config_for(
        &sshd,
        &[("redis", runtime_listen, format!("127.0.0.1:{echo}"))],
        "",
    ) + &controller;
    let mut refused = Agent::start(&runtime_only);
    let log = exits_with(&mut refused);
    assert!(
        log.contains(&format!(
            "listen port {runtime_listen} is runtime port joelclaw.redis.{runtime_listen}"
        )),
        "{log}"
    );
    assert!(
        log.contains("runtime ports belong to Colima/Lima or the Tailscale operator"),
        "{log}"
    );

    let mixed = config_for(
        &sshd,
        &[
            (
                "kube-apiserver",
                operator_listen,
                format!("127.0.0.1:{echo}"),
            ),
            ("redis", runtime_listen, format!("127.0.0.1:{echo}")),
        ],
        "",
    ) + &controller;
    let agent = Agent::start(&mixed);
    wait_echo(&agent, operator_listen, Duration::from_secs(20));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", runtime_listen)).is_err(),
        "the runtime port is not tunneled"
    );
    assert!(
        agent.log().contains("forward \\\"redis\\\" refused")
            || agent.log().contains("forward \"redis\" refused"),
        "{}",
        agent.log()
    );
}

/// Ownership is per protocol (issue 9): a runtime port that is UDP only
/// (LiveKit's 7882/UDP) leaves TCP on the same number to an operator
/// forward; the same port as TCP is refused. The agent reads the protocol
/// from the cached inventory it enforces the rule from.
#[test]
fn operator_forward_beside_a_udp_only_runtime_twin_comes_up_and_a_tcp_twin_is_refused() {
    let sshd = Sshd::start().unwrap();
    let echo = echo_server();
    let shared = listen_port();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("inventory.json");
    let write_cache = |protocol: &str, suffix: &str| {
        std::fs::write(
            &cache,
            format!(
                r#"{{"revision": 4, "runtime_ports": [{{"name": "joelclaw.livekit.{shared}{suffix}",
                    "namespace": "joelclaw", "service": "livekit", "port": {shared},
                    "protocol": "{protocol}"}}]}}"#
            ),
        )
        .unwrap();
    };
    // No controller listens at the endpoint: the rule works from the cache.
    let text = config_for(
        &sshd,
        &[("kube-apiserver", shared, format!("127.0.0.1:{echo}"))],
        "",
    ) + &format!(
        "[controller]\nendpoint = \"http://127.0.0.1:{}\"\ninventory_cache = \"{}\"\n",
        listen_port(),
        cache.display()
    );

    write_cache("UDP", "-udp");
    let agent = Agent::start(&text);
    wait_echo(&agent, shared, Duration::from_secs(20));
    assert!(!agent.log().contains("refused"), "{}", agent.log());
    drop(agent);

    write_cache("TCP", "");
    let mut refused = Agent::start(&text);
    let log = exits_with(&mut refused);
    assert!(
        log.contains(&format!(
            "listen port {shared} is runtime port joelclaw.livekit.{shared} (TCP)"
        )),
        "{log}"
    );
}
