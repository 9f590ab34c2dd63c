//! Host keys are checked as the ssh config says: with a known_hosts file and
//! `StrictHostKeyChecking yes`, the recorded key connects and a changed key
//! (a rebuilt VM, or someone in the middle) is refused with a clear error.

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{echo_agent, echo_once};

#[test]
fn changed_host_key_is_refused_with_a_clear_error() {
    let mut sshd = Sshd::start().unwrap();
    let known_hosts = sshd.ssh_config_path().with_file_name("known_hosts");
    std::fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port(),
            sshd.host_public_key().unwrap()
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(sshd.ssh_config_path()).unwrap();
    let strict = config
        .replace("StrictHostKeyChecking no", "StrictHostKeyChecking yes")
        .replace(
            "UserKnownHostsFile /dev/null",
            &format!("UserKnownHostsFile \"{}\"", known_hosts.display()),
        );
    assert_ne!(strict, config);
    std::fs::write(sshd.ssh_config_path(), strict).unwrap();

    let (agent, port) = echo_agent(&sshd, "outage_grace = \"1s\"\n");

    sshd.regenerate_host_key().unwrap();
    sshd.restart().unwrap();
    agent.wait_log("CHANGED", 1, Duration::from_secs(20));
    let log = agent.log();
    assert!(
        log.contains(&known_hosts.display().to_string()),
        "names the file: {log}"
    );
    assert!(
        echo_once(port, b"ping").is_err(),
        "no traffic over a session with an unverified host: {log}"
    );
}
