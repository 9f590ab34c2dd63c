//! The agent asks sshd for TCP_NODELAY by running `true` once per session:
//! sshd turns it on only for a session that runs a command
//! (`ssh_packet_set_interactive` in OpenSSH's packet.c), and without it a
//! TLS handshake through the tunnel can stall for a delayed ACK (BENCHMARKS.md,
//! issue 12). Read from sshd's own log, so what is checked is what sshd did.

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::sshd::{Sshd, descendants};
use portplane_e2e::workspace_bin;
use tunnel_support::{
    Agent, config_for, echo_once, echo_server, listen_port, wait_echo, wait_until, with_sessions,
};

/// misc.c `set_nodelay` (DEBUG2): once for the connection of a session that
/// ran a command, and once for each connection sshd opens to a forward's
/// target (`connect_next` in channels.c, logged first as [`TARGET_OPENED`]).
const NODELAY_SET: &str = "setting TCP_NODELAY";
const TARGET_OPENED: &str = "connect_next: start";
/// session.c `session_close` (VERBOSE): the command's channel was closed.
const SESSION_CLOSED: &str = "Close session: user";

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn every_session_gets_tcp_nodelay_and_its_command_channel_is_closed() {
    let sshd = Sshd::start_with_log_level("DEBUG2").unwrap();
    let port = listen_port();
    let echo = echo_server();
    let agent = Agent::start(&with_sessions(
        &config_for(&sshd, &[("echo", port, format!("127.0.0.1:{echo}"))], ""),
        2,
    ));
    agent.wait_log("ssh session up", 2, Duration::from_secs(20));
    wait_until(
        Duration::from_secs(20),
        || {
            let log = sshd.log();
            count(&log, NODELAY_SET) == 2 && count(&log, SESSION_CLOSED) == 2
        },
        || {
            format!(
                "sshd did not set TCP_NODELAY on both sessions and close their command channels:\n{}\n{}",
                sshd.log(),
                agent.log()
            )
        },
    );
    // `true` ran through the user's shell and exited.
    assert_eq!(
        count(&sshd.log(), "Starting session: command"),
        2,
        "{}",
        sshd.log()
    );
    wait_echo(&agent, port, Duration::from_secs(10));
    echo_once(port, b"after").unwrap();
    let log = sshd.log();
    assert_eq!(
        count(&log, NODELAY_SET),
        count(&log, TARGET_OPENED) + 2,
        "one request per session only:\n{log}"
    );
}

/// A server that allows no session channels (`MaxSessions 0`: forwarding
/// only; in a `Match` block, since the test config sets it already and
/// sshd keeps a keyword's first value) refuses the request; the tunnel
/// works as before, and `doctor` warns with the way out.
#[test]
fn a_server_that_allows_no_commands_still_forwards() {
    let sshd = Sshd::start_with_config("DEBUG2", "Match all\n  MaxSessions 0\n").unwrap();
    let port = listen_port();
    let echo = echo_server();
    let agent = Agent::start(&config_for(
        &sshd,
        &[("echo", port, format!("127.0.0.1:{echo}"))],
        "",
    ));
    agent.wait_log(
        "could not ask sshd for TCP_NODELAY",
        1,
        Duration::from_secs(20),
    );
    wait_echo(&agent, port, Duration::from_secs(10));
    let log = sshd.log();
    assert_eq!(
        count(&log, NODELAY_SET),
        count(&log, TARGET_OPENED),
        "only the targets' sockets:\n{log}"
    );
    assert!(!agent.log().contains("ssh session lost"), "{}", agent.log());

    let out = std::process::Command::new(workspace_bin("portplane-agent"))
        .args(["doctor", "-o", "json", "--platform", "systemd", "--config"])
        .arg(agent.config_path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let check = report["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == "ssh-nodelay"))
        .unwrap_or_else(|| panic!("no ssh-nodelay check: {report:#}"));
    assert_eq!(check["result"], "warn", "{report:#}");
    assert!(
        check["hint"]
            .as_str()
            .is_some_and(|h| h.contains("sshd_tcp_nodelay = false")),
        "{report:#}"
    );
}

/// A forced command runs instead of `true`; this one prints 64 MiB and then
/// waits for its stdin to end (`ForceCommand head -c 64M /dev/zero; cat`).
/// sshd still sets TCP_NODELAY; the agent reads and drops the output, its
/// EOF ends `cat`, sshd closes the channel, and the tunnel is not held up.
#[test]
fn a_forced_command_that_prints_is_drained_and_ends_on_eof() {
    let sshd = Sshd::start_with_config(
        "DEBUG2",
        "Match all\n  ForceCommand head -c 67108864 /dev/zero; cat\n",
    )
    .unwrap();
    let port = listen_port();
    let echo = echo_server();
    let agent = Agent::start(&with_sessions(
        &config_for(&sshd, &[("echo", port, format!("127.0.0.1:{echo}"))], ""),
        2,
    ));
    agent.wait_log(
        "sshd runs `true`: TCP_NODELAY is on",
        2,
        Duration::from_secs(20),
    );
    wait_until(
        Duration::from_secs(30),
        || count(&sshd.log(), SESSION_CLOSED) == 2,
        || {
            format!(
                "the forced command's channels were not closed:\n{}",
                sshd.log()
            )
        },
    );
    let sshd_pid = sshd.pid().unwrap();
    assert!(
        !descendants(sshd_pid).into_iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cat")
        }),
        "`cat` is still running under sshd"
    );
    for _ in 0..20 {
        echo_once(port, b"through").unwrap();
    }
    assert!(!agent.log().contains("ssh session lost"), "{}", agent.log());
}
