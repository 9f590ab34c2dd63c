//! One client that stops reading must not stall the others nor the session's
//! keepalives; one that reads slowly is slowed down, not cut off; one that
//! half-closes still gets the answer; 200 concurrent connections all get
//! through.

mod tunnel_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{
    Agent, answer_after_eof_server, config_for, echo_agent, echo_once, echo_server, listen_port,
    one_session, source_server, wait_echo,
};

#[test]
fn stalled_reader_does_not_stall_an_active_transfer_or_keepalives() {
    let sshd = Sshd::start().unwrap();
    let endless = source_server(None);
    let bulk = 256 * 1024 * 1024;
    let finite = source_server(Some(bulk));
    let echo = echo_server();
    let (stall_port, bulk_port, echo_port) = (listen_port(), listen_port(), listen_port());
    // One session: the stalled channel and the transfer share it.
    let agent = Agent::start(&one_session(&config_for(
        &sshd,
        &[
            ("stall", stall_port, format!("127.0.0.1:{endless}")),
            ("bulk", bulk_port, format!("127.0.0.1:{finite}")),
            ("echo", echo_port, format!("127.0.0.1:{echo}")),
        ],
        "",
    )));
    wait_echo(&agent, echo_port, Duration::from_secs(20));

    // Connect and never read: the server keeps sending into the tunnel.
    let stalled = TcpStream::connect(("127.0.0.1", stall_port)).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let got = download(&agent, bulk_port, bulk, 1 << 20, Duration::ZERO);
    assert_eq!(got, bulk, "the whole transfer arrived");

    // Longer than keepalive_interval (1s) x keepalive_count_max (3): had the
    // session loop been blocked, keepalives would have gone unanswered and
    // the session would have been dropped and re-made.
    std::thread::sleep(Duration::from_secs(5));
    echo_once(echo_port, b"still here").unwrap();
    assert_eq!(agent.log_count("ssh session lost"), 0, "{}", agent.log());
    assert_eq!(agent.log_count("ssh session up"), 1, "{}", agent.log());
    // Memory stays bounded: the stalled connection is cut at its buffer
    // limit instead of growing without end.
    agent.wait_log("per-connection buffer unread", 1, Duration::from_secs(10));
    // And the client learns it was cut: after what its socket holds, a
    // reset, not an EOF that would pass the cut stream off as whole.
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let end = std::io::copy(&mut stalled, &mut std::io::sink());
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the cut client's stream ended in {end:?}, not a reset\n{}",
        agent.log()
    );
}

/// A download to a slow consumer (`kubectl cp` to a slow disk): the client
/// reads far slower than the tunnel delivers, for several seconds, and gets
/// every byte; the agent holds the session back for it instead of cutting it.
#[test]
fn slow_reader_is_slowed_down_not_cut_off() {
    let sshd = Sshd::start().unwrap();
    let total = 48 * 1024 * 1024;
    let finite = source_server(Some(total));
    let echo = echo_server();
    let (slow_port, echo_port) = (listen_port(), listen_port());
    let agent = Agent::start(&one_session(&config_for(
        &sshd,
        &[
            ("slow", slow_port, format!("127.0.0.1:{finite}")),
            ("echo", echo_port, format!("127.0.0.1:{echo}")),
        ],
        "",
    )));
    wait_echo(&agent, echo_port, Duration::from_secs(20));
    // ~12 MB/s: a few hundredths of what the tunnel moves, for ~4 s, four
    // times the agent's 1 s pause budget.
    let got = download(
        &agent,
        slow_port,
        total,
        64 * 1024,
        Duration::from_millis(5),
    );
    assert_eq!(got, total, "cut off early\n{}", agent.log());
    assert_eq!(
        agent.log_count("resetting connection"),
        0,
        "{}",
        agent.log()
    );
}

/// Read up to `total` bytes from the forward on `port`, `chunk` at a time,
/// resting `between_reads` after each; panics (with the agent's log) if the
/// data stops for 20 s. Returns the bytes read before EOF or `total`.
fn download(agent: &Agent, port: u16, total: u64, chunk: usize, between_reads: Duration) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}\n{}", agent.log()));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
    let mut buf = vec![0u8; chunk];
    let mut got = 0u64;
    while got < total {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => panic!("transfer stalled after {got} bytes: {e}\n{}", agent.log()),
        }
        std::thread::sleep(between_reads);
    }
    got
}

#[test]
fn two_hundred_concurrent_connections() {
    let sshd = Sshd::start().unwrap();
    let (agent, port) = echo_agent(&sshd, "");

    // All 200 open at once before any of them talks.
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(conns.len()));
    let threads: Vec<_> = conns
        .drain(..)
        .enumerate()
        .map(|(i, mut s)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                barrier.wait();
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let msg = format!("connection {i} ").repeat(1000).into_bytes();
                s.write_all(&msg)?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back)?;
                assert_eq!(back, msg, "connection {i} got someone else's bytes");
                Ok(())
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| match t.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{i}: {e}")),
            Err(_) => Some(format!("{i}: panicked")),
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}\n{}", agent.log());
}

/// The client sends its request and shuts its write side; the server
/// answers only after that EOF. The EOF must reach the server as
/// CHANNEL_EOF while the connection stays open for the answer: ending the
/// connection when the client's side ends would lose it.
#[test]
fn half_closed_client_still_gets_the_answer() {
    let sshd = Sshd::start().unwrap();
    let server = answer_after_eof_server();
    let echo = echo_server();
    let (port, echo_port) = (listen_port(), listen_port());
    let agent = Agent::start(&config_for(
        &sshd,
        &[
            ("answer", port, format!("127.0.0.1:{server}")),
            ("echo", echo_port, format!("127.0.0.1:{echo}")),
        ],
        "",
    ));
    wait_echo(&agent, echo_port, Duration::from_secs(20));

    let request: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&request).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer: {e}\n{}", agent.log()));
    assert_eq!(answer.len(), request.len(), "{}", agent.log());
    assert!(answer == request, "the answer differs from what was sent");
}
