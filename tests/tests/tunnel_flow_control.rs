//! The agent grants sshd window as `ssh -L` does: a 2 MiB window and 32 KiB
//! packets per forwarded connection (OpenSSH's `CHAN_TCP_WINDOW_DEFAULT`
//! and `CHAN_TCP_PACKET_DEFAULT`), adjusted once three packets of it are
//! used (`channel_check_window` in OpenSSH's channels.c). sshd then sends at
//! the pace the data is taken, not in bursts of half a window, which under
//! bbr cost sshd 1.1-1.3x the CPU per GB (BENCHMARKS.md, issue 12). Read
//! from sshd's own log, so what is checked is what sshd received.

mod tunnel_support;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use portplane_e2e::sshd::Sshd;
use tunnel_support::one_session_source_agent;

const MIB: u64 = 1024 * 1024;

#[test]
fn sshd_gets_window_in_small_steps_as_ssh_gives_it() {
    let sshd = Sshd::start_with_log_level("DEBUG2").unwrap();
    let total = 16 * MIB;
    let (agent, port) = one_session_source_agent(&sshd, Some(total));

    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("after {} bytes: {e}\n{}", got.len(), agent.log()));
    assert_eq!(got.len() as u64, total, "{}", agent.log());

    let log = sshd.log();
    // serverloop.c, server_input_channel_open (DEBUG).
    assert!(
        log.lines()
            .any(|l| l.contains("ctype direct-tcpip") && l.contains("win 2097152 max 32768")),
        "the channel was not opened with a 2 MiB window and 32 KiB packets:\n{log}"
    );
    // channels.c, channel_input_window_adjust (DEBUG2).
    let adjusts: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("rcvd adjust ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    // Each adjustment hands back what was used: more than three packets and
    // at most one more (the packet that crossed the line).
    let largest = adjusts.iter().copied().max().unwrap_or(0);
    assert!(
        largest <= 4 * 32 * 1024,
        "an adjustment of {largest} bytes: the window was handed back in bursts\n{adjusts:?}"
    );
    // All but the last window's worth was handed back that way.
    let handed_back: u64 = adjusts.iter().sum();
    assert!(
        handed_back >= total - 2 * MIB,
        "only {handed_back} bytes of window were handed back for {total} received: {adjusts:?}"
    );
}
