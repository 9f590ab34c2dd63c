//! A connection that ends must not keep a place in its session's queue.
//!
//! russh's handle queue to a session holds 10 messages; every channel's
//! data, EOF and CHANNEL_CLOSE, and every channel open, waits for room in
//! it, in order (tokio's semaphore is fair). A send the connection task left
//! pending and unpolled once the connection was over kept the room it was
//! later granted: after ten such connections no message reached the session
//! again, though it still answered keepalives (fixed in a221e05). The recipe
//! here is the one from the churn soak where it was seen, made likely:
//! servers that end their side first while their clients are still sending,
//! and right then a session paused for two clients that stopped reading.
//! It failed 3 of 3 runs on a221e05^ (30 s, and a new channel timed out)
//! and passes in 2.4 s with the fix; a heavily loaded machine can shift the
//! timing enough for the old code to pass, never for the fixed one to fail.
// Helpers below the test: a failed setup panics the test that called it.
#![allow(clippy::unwrap_used)]

mod tunnel_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use portplane_e2e::sshd::Sshd;
use tunnel_support::{
    Agent, config_for, echo_once, echo_server, listen_port, one_session, wait_echo,
};

/// Clients whose server ends first. More than the queue's 10 plus those the
/// session gets through between the two pauses, so that at least ten are
/// still waiting for room when their connections end.
const EARLY: usize = 40;

#[test]
fn connections_ended_while_the_session_is_paused_give_back_their_place_in_its_queue() {
    let sshd = Sshd::start().unwrap();
    let (early_port, early_accepted) = accepting_server();
    let flood = Flood::start();
    let echo = echo_server();
    let (early_listen, flood_listen, echo_listen) = (listen_port(), listen_port(), listen_port());
    // One session: every connection shares its queue.
    let agent = Agent::start(&one_session(&config_for(
        &sshd,
        &[
            ("echo", echo_listen, format!("127.0.0.1:{echo}")),
            ("early", early_listen, format!("127.0.0.1:{early_port}")),
            ("flood", flood_listen, format!("127.0.0.1:{}", flood.port)),
        ],
        "",
    )));
    wait_echo(&agent, echo_listen, Duration::from_secs(20));

    // Two clients that will never read; their server waits for the signal.
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", flood_listen)).unwrap())
        .collect();
    flood.wait_accepted(2, &agent);

    // Clients that keep sending, each with its server's side in hand.
    let (saw_eof, eofs) = mpsc::channel();
    let mut writers = Vec::new();
    for _ in 0..EARLY {
        let client = TcpStream::connect(("127.0.0.1", early_listen)).unwrap();
        writers.push(keep_sending(client.try_clone().unwrap()));
        let saw_eof = saw_eof.clone();
        std::thread::spawn(move || {
            let _ = saw_eof.send(read_to_eof(client));
        });
    }
    let servers: Vec<TcpStream> = (0..EARLY)
        .map(|i| {
            early_accepted
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|e| {
                    panic!(
                        "connection {i} never reached its server: {e}\n{}",
                        agent.log()
                    )
                })
        })
        .collect();

    // The servers end their side; once every client has seen that EOF, its
    // connection task gives the client's side a second to end (it will not:
    // they keep sending), then closes the channel.
    for server in &servers {
        server.shutdown(Shutdown::Write).unwrap();
    }
    for i in 0..EARLY {
        let eof = eofs
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| {
                panic!(
                    "client {i} never saw its server's EOF: {e}\n{}",
                    agent.log()
                )
            });
        assert!(
            eof,
            "a client's read failed instead of ending in EOF\n{}",
            agent.log()
        );
    }
    // Within that second the session pauses twice, a second each, for the
    // clients that do not read: the queue fills, and the clients' sends wait.
    flood.release();

    // Each connection ends: the agent closes the client's socket, so its
    // writes fail. Before the fix the tasks waited for ever to send their
    // CHANNEL_CLOSE, behind sends they no longer polled.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, writer) in writers.into_iter().enumerate() {
        while !writer.is_finished() {
            assert!(
                Instant::now() < deadline,
                "connection {i} (of {EARLY}) is still open 30 s after its server ended it\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // And the session still takes new channels.
    echo_once(echo_listen, b"after the burst")
        .unwrap_or_else(|e| panic!("no echo after the burst: {e}\n{}", agent.log()));
    assert_eq!(agent.log_count("ssh session lost"), 0, "{}", agent.log());
    drop(stalled);
    drop(servers);
}

/// A loopback server that hands every accepted connection to the test (after
/// starting a thread that reads and drops whatever arrives on it).
fn accepting_server() -> (u16, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            });
            if accepted.send(stream).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// Writes 4 KiB every 5 ms until a write fails: there is always a send in
/// flight when the session pauses, without saturating the machine.
fn keep_sending(mut client: TcpStream) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunk = [0x42u8; 4096];
        while client.write_all(&chunk).is_ok() {
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// True when the stream ended in EOF, false when a read failed.
fn read_to_eof(mut client: TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// A loopback server that sends without end to each client, once released.
struct Flood {
    port: u16,
    /// (released, connections accepted)
    state: Arc<(Mutex<(bool, usize)>, Condvar)>,
}

impl Flood {
    fn start() -> Flood {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new((Mutex::new((false, 0)), Condvar::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let (lock, changed) = &*shared;
                    let mut guard = lock.lock().unwrap();
                    guard.1 += 1;
                    changed.notify_all();
                    while !guard.0 {
                        guard = changed.wait(guard).unwrap();
                    }
                    drop(guard);
                    let buf = vec![0x5au8; 65536];
                    while stream.write_all(&buf).is_ok() {}
                });
            }
        });
        Flood { port, state }
    }

    fn wait_accepted(&self, n: usize, agent: &Agent) {
        let (lock, changed) = &*self.state;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = changed
            .wait_timeout_while(guard, Duration::from_secs(20), |s| s.1 < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "{} of {n} flood connections reached the server\n{}",
            guard.1,
            agent.log()
        );
    }

    fn release(&self) {
        let (lock, changed) = &*self.state;
        lock.lock().unwrap().0 = true;
        changed.notify_all();
    }
}
