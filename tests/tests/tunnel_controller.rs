//! The agent's link to the real controller: it caches the inventory the
//! controller streams, reports its tunnel into OperatorPort status, and the
//! cached inventory keeps refusing runtime ports once the controller is gone.

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::agents::{agent_token, write_token};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, scoped_config};
use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, config_for, echo_server, listen_port, wait_echo, wait_until};

#[test]
fn inventory_is_cached_tunnel_reported_and_runtime_ports_refused_without_the_controller() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, "tunctl");
    let sshd = Sshd::start().unwrap();
    let echo = echo_server();
    let (listen, runtime) = (listen_port(), listen_port());
    let mut controller = Controller::start(
        plane,
        &scoped_config(
            "tunctl",
            &format!(
                "operatorPorts:\n- {{name: tunctl-kube-apiserver, local: '127.0.0.1:{listen}', target: '127.0.0.1:{echo}'}}\nagents: {{namespace: tunctl}}\n"
            ),
        ),
    );
    scope.apply(&scope.service_yaml(
        "redis",
        "ClusterIP",
        &[(runtime, None)],
        &[("tailscale.com/expose", "true")],
    ));
    let runtime_name = format!("tunctl.redis.{runtime}");
    scope.wait_oport(&runtime_name, "published", |_| true);

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("portplane/inventory.json");
    let token = write_token(cache_dir.path(), &agent_token(plane, "tunctl", "test"));
    let link = format!(
        "[controller]\nendpoint = \"http://127.0.0.1:{}\"\ninventory_cache = \"{}\"\ntoken_file = \"{}\"\n",
        controller.grpc_port,
        cache.display(),
        token.display()
    );
    let agent = Agent::start(
        &(config_for(
            &sshd,
            &[("tunctl-kube-apiserver", listen, format!("127.0.0.1:{echo}"))],
            "",
        ) + &link),
    );
    wait_echo(&agent, listen, Duration::from_secs(20));
    wait_until(
        Duration::from_secs(30),
        || std::fs::read_to_string(&cache).is_ok_and(|c| c.contains(&runtime_name)),
        || {
            format!(
                "{} never cached {runtime_name}:\n{}",
                cache.display(),
                agent.log()
            )
        },
    );
    // What the ownership rule is enforced from is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o600, "{}", cache.display());
    assert_eq!(mode(cache.parent().unwrap()), 0o700);
    let o = scope.wait_oport("tunctl-kube-apiserver", "the agent's report", |o| {
        o["status"]["agents"][0]["tunnel"] == "Up"
    });
    assert_eq!(o["status"]["agents"][0]["name"], "test");
    drop(agent);

    // The controller is gone; the cached inventory still refuses a forward
    // onto the runtime port.
    controller.kill();
    let mut refused = Agent::start(
        &(config_for(
            &sshd,
            &[("redis", runtime, format!("127.0.0.1:{echo}"))],
            "",
        ) + &link),
    );
    let status = refused
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("agent kept running:\n{}", refused.log()));
    assert!(!status.success());
    let log = refused.log();
    assert!(
        log.contains(&format!(
            "listen port {runtime} is runtime port {runtime_name}"
        )),
        "{log}"
    );
}
