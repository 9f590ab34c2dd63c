//! Host keys are checked as the ssh config says, as OpenSSH does: with a
//! known_hosts file and `StrictHostKeyChecking yes`, the recorded key
//! connects and a changed key (a rebuilt VM, or someone in the middle) is
//! refused with a clear error; `accept-new` records the first key and then
//! refuses a change; `NoHostAuthenticationForLocalhost yes` (which Lima
//! writes) skips the check for a loopback server.

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{echo_agent, echo_once, wait_until};

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
        // The test sshd is on 127.0.0.1: with this, OpenSSH checks nothing.
        .replace("  NoHostAuthenticationForLocalhost yes\n", "")
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

/// Before: `accept-new` was treated like `no`: nothing was recorded, and
/// after the host key changed the agent reconnected and served.
#[test]
fn accept_new_records_the_first_key_and_refuses_a_changed_one() {
    let mut sshd = Sshd::start().unwrap();
    let known_hosts = sshd.ssh_config_path().with_file_name("new/known_hosts");
    let config = std::fs::read_to_string(sshd.ssh_config_path()).unwrap();
    let accept_new = config
        .replace(
            "StrictHostKeyChecking no",
            "StrictHostKeyChecking accept-new",
        )
        .replace("  NoHostAuthenticationForLocalhost yes\n", "")
        .replace(
            "UserKnownHostsFile /dev/null",
            &format!("UserKnownHostsFile \"{}\"", known_hosts.display()),
        );
    std::fs::write(sshd.ssh_config_path(), accept_new).unwrap();

    let (agent, port) = echo_agent(&sshd, "outage_grace = \"1s\"\n");
    // Key type and base64, without the .pub file's comment.
    let public = sshd.host_public_key().unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    let recorded = format!("[127.0.0.1]:{} {}", sshd.port(), key.join(" "));
    let text = std::fs::read_to_string(&known_hosts).unwrap_or_default();
    assert!(text.contains(&recorded), "{text:?} lacks {recorded:?}");

    sshd.regenerate_host_key().unwrap();
    sshd.restart().unwrap();
    agent.wait_log("CHANGED", 1, Duration::from_secs(20));
    assert!(
        echo_once(port, b"ping").is_err(),
        "served over a host whose key changed: {}",
        agent.log()
    );
}

/// Lima's config: no known hosts, `StrictHostKeyChecking yes` would refuse,
/// but the server is on 127.0.0.1 and `NoHostAuthenticationForLocalhost yes`
/// tells OpenSSH not to check; the agent connects as `ssh` would.
#[test]
fn no_host_authentication_for_localhost_is_honoured() {
    let sshd = Sshd::start().unwrap();
    let config = std::fs::read_to_string(sshd.ssh_config_path()).unwrap();
    assert!(config.contains("NoHostAuthenticationForLocalhost yes"));
    std::fs::write(
        sshd.ssh_config_path(),
        config.replace("StrictHostKeyChecking no", "StrictHostKeyChecking yes"),
    )
    .unwrap();
    let (agent, port) = echo_agent(&sshd, "");
    wait_until(
        Duration::from_secs(5),
        || echo_once(port, b"ping").is_ok(),
        || agent.log(),
    );
}
