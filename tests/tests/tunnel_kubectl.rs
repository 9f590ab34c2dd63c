//! The real kubectl reaches the real kube-apiserver through the agent's
//! tunnel over the real sshd, and keeps doing so after sshd is killed and
//! comes back (on the same port, and on a new one written into ssh.config).

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::free_port;
use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, config_for, listen_port};

fn kubectl_via(cp: &ControlPlane, listen: u16) -> Result<String, String> {
    let out = cp
        .kubectl()
        .args(["--server", &format!("https://127.0.0.1:{listen}")])
        .args(["--request-timeout", "5s", "get", "namespaces", "-o", "name"])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_kubectl(cp: &ControlPlane, agent: &Agent, listen: u16, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match kubectl_via(cp, listen) {
            Ok(out) => return out,
            Err(last) => assert!(
                std::time::Instant::now() < deadline,
                "kubectl never succeeded through the tunnel: {last}\nagent log:\n{}",
                agent.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kubectl_lists_namespaces_through_the_tunnel_and_survives_sshd_restarts() {
    let cp = ControlPlane::shared();
    let apiserver = cp.apiserver_port().unwrap();
    let mut sshd = Sshd::start().unwrap();
    let listen = listen_port();
    let agent = Agent::start(&config_for(
        &sshd,
        &[("kube-apiserver", listen, format!("127.0.0.1:{apiserver}"))],
        "",
    ));

    let namespaces = wait_kubectl(cp, &agent, listen, Duration::from_secs(30));
    assert!(
        namespaces.lines().any(|l| l == "namespace/kube-system"),
        "{namespaces}"
    );
    assert!(
        namespaces.lines().any(|l| l == "namespace/default"),
        "{namespaces}"
    );
    // Its own SSH connection, never the ControlMaster socket.
    assert!(!sshd.ssh_config_path().with_file_name("ssh.sock").exists());

    // sshd (and every session it forked) killed, then back on the same port.
    sshd.restart().unwrap();
    agent.wait_log("ssh session lost", 1, Duration::from_secs(15));
    wait_kubectl(cp, &agent, listen, Duration::from_secs(20));

    // The VM comes back on a new port, written into ssh.config: the agent
    // re-reads the file on reconnect.
    let old_port = sshd.port();
    let new_port = free_port().unwrap();
    sshd.restart_on(new_port).unwrap();
    assert_ne!(old_port, new_port);
    wait_kubectl(cp, &agent, listen, Duration::from_secs(20));
    assert!(
        agent.log().contains(&format!("\"port\":{new_port}")),
        "agent reconnected to the new port:\n{}",
        agent.log()
    );
}
