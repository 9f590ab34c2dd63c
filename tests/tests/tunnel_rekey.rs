//! New session keys in the middle of busy transfers: `RekeyLimit` from the
//! ssh config makes the agent start key exchanges while sshd is sending on
//! several channels at once.
//!
//! Until sshd reads the agent's KEXINIT it may go on sending whatever window
//! the agent granted it, on every channel (RFC 4253 section 7.1). russh
//! 0.65.1 dropped the session ("Pending buffer limit reached") once more
//! than two windows' worth arrived that way, though a session with several
//! busy channels legitimately has one window in flight per channel: in the
//! churn soak a rekey at russh's 1 GiB limit cost a session now and then.

mod tunnel_support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::one_session_source_agent;

const MIB: u64 = 1024 * 1024;

#[test]
fn keys_are_renewed_under_load_without_losing_the_session() {
    let sshd = Sshd::start_with_log_level("DEBUG1").unwrap();
    let mut ssh_config = std::fs::OpenOptions::new()
        .append(true)
        .open(sshd.ssh_config_path())
        .unwrap();
    writeln!(ssh_config, "  RekeyLimit 4M").unwrap();
    let total = 48 * MIB;
    // One session: every transfer, and every key exchange, on it.
    let (agent, port) = one_session_source_agent(&sshd, Some(total));

    let downloads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut client = TcpStream::connect(("127.0.0.1", port))?;
                client.set_read_timeout(Some(Duration::from_secs(20)))?;
                std::io::copy(&mut client, &mut std::io::sink())
            })
        })
        .collect();
    for (i, download) in downloads.into_iter().enumerate() {
        let got = download.join().unwrap();
        assert!(
            matches!(got, Ok(n) if n == total),
            "download {i} got {got:?} of {total} bytes\n{}",
            agent.log()
        );
    }
    assert_eq!(agent.log_count("ssh session lost"), 0, "{}", agent.log());
    assert_eq!(agent.log_count("ssh session up"), 1, "{}", agent.log());
    // kex.c logs each KEXINIT it receives: the first, and the agent's rekeys
    // (192 MiB under a 4 MiB limit).
    let kexinits = sshd.log().matches("SSH2_MSG_KEXINIT received").count();
    assert!(
        kexinits > 10,
        "only {kexinits} key exchanges:\n{}",
        sshd.log()
    );
}
