//! A connection that arrives while sshd is down waits for the new session
//! (up to `ssh.outage_grace`) instead of being refused; listeners stay bound.

mod tunnel_support;

use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::{echo_agent, echo_once};

#[test]
fn connection_during_an_outage_waits_for_the_new_session() {
    let mut sshd = Sshd::start().unwrap();
    let (agent, port) = echo_agent(&sshd, "");

    sshd.stop();
    agent.wait_log("ssh session lost", 1, Duration::from_secs(15));
    // The log says why: sshd gone, the connection ended mid-stream, with
    // a FIN ("early eof") or, when sshd died with unread data, a reset.
    let log = agent.log();
    let lost = log.lines().find(|l| l.contains("ssh session lost"));
    assert!(
        lost.is_some_and(|l| l.contains(r#""reason":"early eof""#)
            || l.contains(r#""reason":"Connection reset by peer (os error 104)""#)),
        "{log}"
    );
    // The listener is still bound while no session exists...
    let waiting = std::thread::spawn(move || echo_once(port, b"made it across the outage"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!waiting.is_finished(), "the connection was not refused");
    // ...and the connection goes through once sshd is back.
    sshd.restart().unwrap();
    waiting
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("waiting connection failed: {e}\n{}", agent.log()));
}

#[test]
fn connection_is_closed_after_the_outage_grace() {
    let mut sshd = Sshd::start().unwrap();
    let (agent, port) = echo_agent(&sshd, "outage_grace = \"1s\"\n");
    sshd.stop();
    agent.wait_log("ssh session lost", 1, Duration::from_secs(15));
    let started = std::time::Instant::now();
    // Reset, not closed: the agent read the request while it waited, and
    // an EOF would look like an empty answer.
    let closed = echo_once(port, b"nobody home").unwrap_err();
    assert_eq!(
        closed.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{closed}\n{}",
        agent.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the grace, not the client's 10 s read timeout"
    );
    agent.wait_log(
        "no ssh session within the outage grace",
        1,
        Duration::from_secs(5),
    );
}

/// A download under way when the session is lost must not look complete:
/// the client gets what arrived, then a reset, never a clean EOF (which
/// `ssh -L` gives, exiting, and which a client without a length of its own,
/// a streamed log or a tar through `kubectl cp`, would take as the end).
#[test]
fn a_transfer_cut_by_a_lost_session_ends_in_a_reset_not_an_eof() {
    use std::io::Read;
    let mut sshd = Sshd::start().unwrap();
    let source = tunnel_support::source_server(None);
    let (agent, port) = tunnel_support::forward_agent(&sshd, "endless", source);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < 1024 * 1024 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => panic!("the download ended after {got} bytes\n{}", agent.log()),
            Ok(n) => got += n,
        }
    }
    sshd.stop();
    let end = loop {
        match client.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n,
            Err(e) => break Err(e),
        }
    };
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "after {got} bytes the transfer ended in {end:?}, not a reset\n{}",
        agent.log()
    );
    agent.wait_log(
        "ssh session was lost before the server ended",
        1,
        Duration::from_secs(5),
    );
}

/// Requests sent and half-closed while no session exists are read at
/// once (the agent holds up to 64 KiB of each for its channel, see
/// `read_early`) and must still reach the server whole, in order, the EOF
/// after them, once a session is back: the server answers only after that
/// EOF. One request fits what is held, the other is 16 times larger.
#[test]
fn requests_half_closed_during_an_outage_are_answered_after_it() {
    use std::io::{Read, Write};
    let mut sshd = Sshd::start().unwrap();
    let server = tunnel_support::answer_after_eof_server();
    let (agent, port) = tunnel_support::forward_agent(&sshd, "answer", server);
    sshd.stop();
    agent.wait_log("ssh session lost", 1, Duration::from_secs(15));

    let clients: Vec<_> = [1_000usize, 1 << 20]
        .into_iter()
        .map(|len| {
            let request: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            // The large one cannot all be taken before the channel opens.
            std::thread::spawn(move || {
                client.write_all(&request).unwrap();
                client.shutdown(std::net::Shutdown::Write).unwrap();
                let mut answer = Vec::new();
                let read = client.read_to_end(&mut answer);
                (request, answer, read)
            })
        })
        .collect();
    sshd.restart().unwrap();
    for client in clients {
        let (request, answer, read) = client.join().unwrap();
        assert!(
            read.is_ok(),
            "reading the answer: {read:?}\n{}",
            agent.log()
        );
        assert_eq!(answer.len(), request.len(), "{}", agent.log());
        assert!(answer == request, "the answer differs from the request");
    }
}
