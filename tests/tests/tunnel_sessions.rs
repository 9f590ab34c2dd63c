//! Which pooled SSH session a new connection goes to: the first live one
//! that is not holding back for a slow reader, as `ssh -L` carries every
//! forward on one connection (`tunnel::pool::first_not_behind`). Seen from
//! sshd's side: each session is an sshd process of its own, and the process
//! that holds a connection's socket to the target is the session that
//! carries it.

// Helpers of this test binary only; a failure is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tunnel_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{
    Agent, config_for, echo_server, listen_port, source_server, wait_echo, wait_until,
    with_sessions,
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

/// A client reading an endless download at about 800 KiB/s, far slower
/// than the tunnel delivers (`kubectl cp` to a slow disk): 16 KiB every
/// 20 ms until `stop`. Returns the bytes read.
fn slow_reader(mut stream: TcpStream, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
            // The reader's pace, not a wait for an event.
            std::thread::sleep(Duration::from_millis(20));
        }
        total
    })
}

#[test]
fn new_connections_go_to_the_first_session_unless_a_slow_reader_holds_it_back() {
    let sshd = Sshd::start().unwrap();
    let echo = echo_server();
    let endless = source_server(None);
    let (port, slow_port) = (listen_port(), listen_port());
    let agent = Agent::start(&with_sessions(
        &config_for(
            &sshd,
            &[
                ("echo", port, format!("127.0.0.1:{echo}")),
                ("slow", slow_port, format!("127.0.0.1:{endless}")),
            ],
            "",
        ),
        2,
    ));
    agent.wait_log("ssh session up", 2, Duration::from_secs(20));
    wait_echo(&agent, port, Duration::from_secs(10));

    // Nothing else open: one connection after another stays on one session
    // (round-robin would alternate).
    let first = carried_by(port, echo);
    for _ in 0..4 {
        assert_eq!(carried_by(port, echo), first, "{}", agent.log());
    }

    // One connection kept open and sending there: the next ones share its
    // session too (spreading by connections still sending would move them).
    let held = Through::open(port, echo);
    assert_eq!(held.sshd_pid(), first);
    for _ in 0..3 {
        assert_eq!(carried_by(port, echo), first, "{}", agent.log());
    }

    // A slow reader on that session: once it has more than 256 KiB unread,
    // new connections go to the session standing by, and stay there while
    // it lags.
    // Reading from the start: a client that reads nothing within the
    // session's first pause (1 s) counts as stalled and is cut, which would
    // end the test's slow reader before it could hold the session back.
    let slow = TcpStream::connect(("127.0.0.1", slow_port)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = slow_reader(slow, stop.clone());
    wait_until(
        Duration::from_secs(10),
        || sshd_sockets_to(endless).len() == 1,
        || format!("sshd never connected to the source:\n{}", agent.log()),
    );
    let slow_socket = *sshd_sockets_to(endless).first().unwrap();
    assert_eq!(
        slow_socket.1, first,
        "the slow reader is on the first session"
    );
    let mut second = first;
    wait_until(
        Duration::from_secs(10),
        || {
            second = carried_by(port, echo);
            second != first
        },
        || {
            format!(
                "new connections stayed on the session held back by a slow reader:\n{}",
                agent.log()
            )
        },
    );
    for _ in 0..3 {
        assert_eq!(carried_by(port, echo), second, "{}", agent.log());
    }

    // The slow reader gone: back to the first session.
    stop.store(true, Ordering::Relaxed);
    let read = reader.join().unwrap();
    assert!(read > 0, "the slow reader read nothing");
    wait_until(
        Duration::from_secs(10),
        || !sshd_sockets_to(endless).contains(&slow_socket),
        || format!("sshd kept the slow reader's socket:\n{}", agent.log()),
    );
    wait_until(
        Duration::from_secs(10),
        || carried_by(port, echo) == first,
        || {
            format!(
                "new connections never went back to the first session:\n{}",
                agent.log()
            )
        },
    );
    held.close(echo);
}
