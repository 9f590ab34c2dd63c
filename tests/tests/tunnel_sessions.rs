//! Which pooled SSH session a new connection goes to: the live one with the
//! fewest connections still sending, ties to the first
//! (`tunnel::pool::least_busy`). Seen from sshd's side: each session is an
//! sshd process of its own, and the process that holds a connection's
//! socket to the target is the session that carries it.

// Helpers of this test binary only; a failure is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tunnel_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{
    Agent, config_for, echo_server, listen_port, wait_echo, wait_until, with_sessions,
};

/// sshd's established sockets to 127.0.0.1:`target`, as (local port, pid).
fn sshd_sockets_to(target: u16) -> BTreeSet<(u16, u32)> {
    let out = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{target}"),
        ])
        .output()
        .expect("ss (iproute2) is needed to see which sshd process holds a socket");
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains("\"sshd\""))
        .filter_map(|line| {
            let local = line.split_whitespace().nth(2)?;
            let port = local.rsplit(':').next()?.parse().ok()?;
            let pid = line.split("pid=").nth(1)?.split(',').next()?.parse().ok()?;
            Some((port, pid))
        })
        .collect()
}

/// A connection through the tunnel, echoed once (so sshd has connected to
/// the target), and the sshd process that carries it.
struct Through {
    stream: TcpStream,
    socket: (u16, u32),
}

impl Through {
    fn open(port: u16, target: u16) -> Through {
        let before = sshd_sockets_to(target);
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(b"x").unwrap();
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).unwrap();
        let new = || -> Vec<(u16, u32)> {
            sshd_sockets_to(target)
                .difference(&before)
                .copied()
                .collect()
        };
        wait_until(
            Duration::from_secs(10),
            || new().len() == 1,
            || format!("not one new sshd socket to the target: {:?}", new()),
        );
        Through {
            stream,
            socket: new()[0],
        }
    }

    fn sshd_pid(&self) -> u32 {
        self.socket.1
    }

    /// Close, and wait until sshd has closed its side to the target too.
    fn close(self, target: u16) {
        let Through { stream, socket } = self;
        drop(stream);
        wait_until(
            Duration::from_secs(10),
            || !sshd_sockets_to(target).contains(&socket),
            || format!("sshd kept {socket:?} to the target after the client closed"),
        );
    }
}

/// The sshd process that carries one connection opened and closed now.
fn carried_by(port: u16, target: u16) -> u32 {
    let conn = Through::open(port, target);
    let pid = conn.sshd_pid();
    conn.close(target);
    pid
}

#[test]
fn new_connections_go_to_the_least_busy_session_ties_to_the_first() {
    let sshd = Sshd::start().unwrap();
    let echo = echo_server();
    let port = listen_port();
    let agent = Agent::start(&with_sessions(
        &config_for(&sshd, &[("echo", port, format!("127.0.0.1:{echo}"))], ""),
        2,
    ));
    agent.wait_log("ssh session up", 2, Duration::from_secs(20));
    wait_echo(&agent, port, Duration::from_secs(10));

    // Nothing else open: one connection after another stays on the first
    // session (round-robin would alternate).
    let first = carried_by(port, echo);
    for _ in 0..4 {
        assert_eq!(carried_by(port, echo), first, "{}", agent.log());
    }

    // One connection kept open there: the next ones go to the other session.
    let held = Through::open(port, echo);
    assert_eq!(held.sshd_pid(), first);
    let second = carried_by(port, echo);
    assert_ne!(second, first, "{}", agent.log());
    for _ in 0..3 {
        assert_eq!(carried_by(port, echo), second, "{}", agent.log());
    }
    // Both busy with one: a tie, so the first session again.
    let other = Through::open(port, echo);
    assert_eq!(other.sshd_pid(), second);
    let tie = Through::open(port, echo);
    assert_eq!(tie.sshd_pid(), first, "{}", agent.log());

    // All closed: back to the first.
    for conn in [held, other, tie] {
        conn.close(echo);
    }
    assert_eq!(carried_by(port, echo), first, "{}", agent.log());
}
