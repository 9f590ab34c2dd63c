//! Host facts from real Docker: a real dockerd runs a container named like
//! the Talos node with the seed's port maps (published on 127.0.0.3 of their
//! own; no network is attached and no traffic goes to them), the real agent
//! runs `docker inspect` on the "VM" over SSH through the real sshd, reports
//! the maps, and the real controller shows the PDS's host endpoint
//! `127.0.0.1:9627` (seed: Mac 9627 -> container 3000 -> NodePort 3000).

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::agents::{agent_token, write_token};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, agents_config};
use portplane_e2e::docker::Docker;
use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, echo_server, linked_config, listen_port};

const SCOPE: &str = "agdk";

/// A stray `ssh -N -L` (the seed's classic second owner), killed on drop.
struct Stray(std::process::Child);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn docker_port_maps_over_ssh_become_the_nodeport_host_endpoint() {
    // The redis NodePort; Lima would forward it to the same host port.
    let redis = portplane_e2e::free_port().unwrap();
    let docker = Docker::start().unwrap();
    let redis_map = format!("127.0.0.3:{redis}:{redis}");
    docker
        .talos_node(
            "agdk-controlplane-1",
            // 9628 -> 3001: no Service has NodePort 3001 (yet).
            &["127.0.0.3:9627:3000", &redis_map, "127.0.0.3:9628:3001"],
        )
        .unwrap_or_else(|e| panic!("{e}\ndockerd log:\n{}", docker.log()));

    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let (listen, echo) = (listen_port(), echo_server());
    let target = format!("127.0.0.1:{echo}");
    let controller = Controller::start(
        plane,
        &agents_config(SCOPE, "agdk-kube-apiserver", listen, &target, None),
    );
    scope.apply(&scope.service_yaml("bluesky-pds", "NodePort", &[(3000, Some(3000))], &[]));
    scope.apply(&scope.service_yaml("redis", "NodePort", &[(redis, Some(redis))], &[]));
    // No Docker map for this one.
    scope.apply(&scope.service_yaml("typesense", "NodePort", &[(8108, Some(8108))], &[]));
    let o = scope.wait_oport("agdk.bluesky-pds.3000", "published", |_| true);
    assert_eq!(o["spec"]["endpoint"], "node:3000", "no host facts yet");

    let sshd = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = write_token(dir.path(), &agent_token(plane, SCOPE, "laptop"));
    let config = linked_config(
        &sshd,
        "laptop",
        ("agdk-kube-apiserver", listen, target.clone()),
        &format!("127.0.0.1:{}", controller.grpc_port),
        &token,
        dir.path(),
        "",
    ) + &format!(
        "[docker]\ncontainer = \"agdk-controlplane-1\"\ncommand = \"docker -H {}\"\ninterval = \"1s\"\n\
         [second_owners]\ninterval = \"1s\"\n",
        docker.host()
    );
    let agent = Agent::start(&config);
    let o = std::panic::catch_unwind(|| {
        scope.wait_oport("agdk.bluesky-pds.3000", "the host endpoint", |o| {
            o["spec"]["endpoint"] == "127.0.0.1:9627"
        })
    })
    .unwrap_or_else(|_| panic!("agent log:\n{}", agent.log()));
    assert_eq!(o["spec"]["exposures"][0]["hostPort"], 9627, "{o}");
    assert_eq!(o["spec"]["nodePort"], 3000);
    let (_, message) = scope.wait_condition("agdk.typesense.8108", "NoHostPort");
    assert!(
        message.contains("NodePort 8108") && message.contains("laptop"),
        "{message}"
    );
    assert!(
        portplane_e2e::controller::condition(&o, "NoHostPort").is_none(),
        "the mapped PDS is not flagged: {o}"
    );

    // The map to container port 3001 leads nowhere: an object of its own,
    // not Ready, saying which nodePort to set; gone once a Service takes
    // NodePort 3001, which then shows the map's host endpoint.
    let (o, message) = scope.wait_condition("hostport.9628.3001", "NoNodePort");
    assert!(
        message.contains("laptop") && message.contains("nodePort: 3001"),
        "{message}"
    );
    assert_eq!(o["spec"]["endpoint"], "127.0.0.1:9628", "{o}");
    let ready = portplane_e2e::controller::condition(&o, "Ready").unwrap();
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&"False".into(), &"NoNodePort".into())
    );
    assert!(
        scope.oport("hostport.9627.3000").is_none(),
        "the PDS's map has its NodePort"
    );
    scope.apply(&scope.service_yaml("grafana", "NodePort", &[(3001, Some(3001))], &[]));
    scope.wait_gone("hostport.9628.3001");
    scope.wait_oport("agdk.grafana.3001", "the host endpoint", |o| {
        o["spec"]["endpoint"] == "127.0.0.1:9628"
    });

    // A stray `ssh -N -L` on the redis NodePort: a second owner, named with
    // its pid on the redis OperatorPort; gone again once it is stopped.
    let redis_name = format!("agdk.redis.{redis}");
    scope.wait_oport(&redis_name, "the agent's inventory has redis", |_| true);
    let stray = Stray(
        std::process::Command::new("ssh")
            .arg("-F")
            .arg(sshd.ssh_config_path())
            // Its own connection, as the seed's tunnels were (Lima's
            // ssh.config would otherwise fork a ControlPersist master).
            .args([
                "-N",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
            ])
            .args(["-o", "ControlMaster=no", "-o", "ControlPath=none", "-L"])
            .arg(format!("127.0.0.1:{redis}:127.0.0.1:{echo}"))
            .arg(sshd.host_alias())
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = stray.0.id();
    let (_, message) = scope.wait_condition(&redis_name, "SecondOwner");
    assert!(
        message.contains("host laptop")
            && message.contains(&format!("pid {pid} (ssh:"))
            && message.contains(&format!("127.0.0.1:{redis}")),
        "stray pid {pid}: {message}"
    );
    drop(stray);
    scope.wait_oport(&redis_name, "SecondOwner cleared", |o| {
        portplane_e2e::controller::condition(o, "SecondOwner").is_none_or(|c| c["status"] != "True")
    });

    // The container is gone: the agent says so (once) and keeps the last
    // maps rather than reporting none.
    docker.docker(&["rm", "-f", "agdk-controlplane-1"]).unwrap();
    agent.wait_log(
        "cannot read the VM's docker port maps",
        1,
        Duration::from_secs(20),
    );
    let log = agent.log();
    assert!(
        log.contains("No such object") || log.contains("no such"),
        "{log}"
    );
}

/// The maps are read again when the tunnel comes back after an outage (a
/// VM restart may bring other maps), not only every `[docker] interval`
/// (an hour here, so only the reconnect can explain the new endpoint).
#[test]
fn the_maps_are_read_again_after_the_tunnel_reconnects() {
    const SCOPE: &str = "agdkre";
    let node_port = portplane_e2e::free_port().unwrap();
    let (before, after) = (
        portplane_e2e::free_port().unwrap(),
        portplane_e2e::free_port().unwrap(),
    );
    let docker = Docker::start().unwrap();
    let node = "agdkre-controlplane-1";
    let map = |host: u16| format!("127.0.0.3:{host}:{node_port}");
    docker
        .talos_node(node, &[&map(before)])
        .unwrap_or_else(|e| panic!("{e}\ndockerd log:\n{}", docker.log()));
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, SCOPE);
    let (listen, echo) = (listen_port(), echo_server());
    let target = format!("127.0.0.1:{echo}");
    let controller = Controller::start(
        plane,
        &agents_config(SCOPE, "agdkre-kube-apiserver", listen, &target, None),
    );
    scope.apply(&scope.service_yaml("pds", "NodePort", &[(3000, Some(node_port))], &[]));
    let mut sshd = Sshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = write_token(dir.path(), &agent_token(plane, SCOPE, "laptop"));
    let config = linked_config(
        &sshd,
        "laptop",
        ("agdkre-kube-apiserver", listen, target.clone()),
        &format!("127.0.0.1:{}", controller.grpc_port),
        &token,
        dir.path(),
        "",
    ) + &format!(
        "[docker]\ncontainer = \"{node}\"\ncommand = \"docker -H {}\"\ninterval = \"1h\"\n",
        docker.host()
    );
    let agent = Agent::start(&config);
    let name = format!("{SCOPE}.pds.3000");
    let first = std::panic::catch_unwind(|| {
        scope.wait_oport(&name, "the first map's host endpoint", |o| {
            o["spec"]["endpoint"] == format!("127.0.0.1:{before}")
        })
    });
    assert!(first.is_ok(), "agent log:\n{}", agent.log());

    // The "VM" restarts: the node container comes back with another map,
    // and every SSH session is lost and made anew.
    docker.docker(&["rm", "-f", node]).unwrap();
    docker.talos_node(node, &[&map(after)]).unwrap();
    sshd.stop();
    sshd.restart().unwrap();
    let second = std::panic::catch_unwind(|| {
        scope.wait_oport(&name, "the new map's host endpoint", |o| {
            o["spec"]["endpoint"] == format!("127.0.0.1:{after}")
        })
    });
    assert!(second.is_ok(), "agent log:\n{}", agent.log());
    assert!(
        agent.log_count("tunnel reconnected: reading the docker port maps again") >= 1,
        "{}",
        agent.log()
    );
}
