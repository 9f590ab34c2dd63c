//! Every way a forwarded connection ends gives back what it held: its SSH
//! channel (so sshd closes its connection to the target), its sink and its
//! share of the agent-wide buffer budget. Counted at sshd's side, through
//! /proc/net/tcp: the connections sshd still holds to each loopback target.

mod tunnel_support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use portplane_e2e::soak::{self, Listen, Plan, Targets};
use portplane_e2e::sshd::Sshd;
use tunnel_support::{Agent, config_for, listen_port, wait_echo, wait_until};

/// The agent with one forward per soak target.
fn agent_for(sshd: &Sshd, targets: &Targets) -> (Agent, Listen) {
    let listen = Listen {
        stall: listen_port(),
        reset: listen_port(),
        early: listen_port(),
        echo: listen_port(),
        bulk: listen_port(),
    };
    let t = |port: u16| format!("127.0.0.1:{port}");
    let agent = Agent::start(&config_for(
        sshd,
        &[
            ("echo", listen.echo, t(targets.echo.port)),
            ("stall", listen.stall, t(targets.stall.port)),
            ("reset", listen.reset, t(targets.reset.port)),
            ("early", listen.early, t(targets.early.port)),
            ("bulk", listen.bulk, t(targets.bulk.port)),
        ],
        "",
    ));
    wait_echo(&agent, listen.echo, Duration::from_secs(20));
    (agent, listen)
}

/// 20 clients that never read, each cut by the agent (16 of them fill the
/// agent-wide 256 MiB budget): once cut, their channels must close at sshd
/// and their buffers be freed, so a normal 50 MiB download afterwards gets
/// every byte. Before the fix the channels stayed open, the server kept
/// sending into sinks nobody freed, and the download was cut at ~4 MiB
/// ("the agent's total buffer for unread data is full").
#[test]
fn cut_stalled_clients_close_their_channels_and_free_the_budget() {
    let sshd = Sshd::start().unwrap();
    let targets = Targets::start(50 * 1024 * 1024).unwrap();
    let (agent, listen) = agent_for(&sshd, &targets);

    let stalled: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", listen.stall)).unwrap())
        .collect();
    agent.wait_log("resetting connection", 20, Duration::from_secs(90));
    wait_until(
        Duration::from_secs(10),
        || targets.stall.open_at_sshd() == 0,
        || {
            format!(
                "20 stalled clients were cut, but sshd still holds {} connections to their target\n{}",
                targets.stall.open_at_sshd(),
                agent.log()
            )
        },
    );
    drop(stalled);

    let plan = Plan {
        download_pause: Duration::ZERO,
        download_chunk: 1024 * 1024,
        ..Plan::standard()
    };
    let got = download(listen.bulk, plan.download_bytes, plan.download_chunk);
    assert_eq!(got, Ok(plan.download_bytes), "{}", agent.log());
}

fn download(port: u16, total: u64, chunk: usize) -> Result<u64, String> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; chunk];
    let mut got = 0u64;
    while got < total {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("EOF after {got} bytes")),
            Ok(n) => got += n as u64,
            Err(e) => return Err(format!("after {got} bytes: {e}")),
        }
    }
    Ok(got)
}

/// The soak: 1,000 connections through the agent, 100 of them
/// stalled (and cut), 100 clients resetting, 200 servers closing early, the
/// rest echoing. Afterwards sshd holds no channel to any target, the agent's
/// RSS is back within a few MiB of idle, and a slow 50 MiB download (~12
/// MB/s, four times the agent's pause budget) gets every byte.
#[test]
fn soak_a_thousand_connections_leaves_nothing_behind() {
    let sshd = Sshd::start().unwrap();
    let plan = Plan::standard();
    let targets = Targets::start(plan.download_bytes).unwrap();
    let (agent, listen) = agent_for(&sshd, &targets);
    let pid = agent.pid().unwrap();
    let started = Instant::now();
    let figures = soak::run(pid, listen, &targets, plan).unwrap();
    eprintln!(
        "soak figures ({:.1} s in all):\n{}\n{}\n{figures:#?}",
        started.elapsed().as_secs_f64(),
        soak::Figures::MARKDOWN_HEADER,
        figures.markdown_row("portplane-agent (debug build)")
    );
    assert!(
        figures.failures.is_empty(),
        "{:?}\n{}",
        figures.failures,
        agent.log()
    );
    assert_eq!(
        figures.stalled_not_closed,
        0,
        "{figures:#?}\n{}",
        agent.log()
    );
    assert_eq!(figures.channels_left, 0, "{figures:#?}");
    assert_eq!(
        figures.download_error,
        None,
        "{figures:#?}\n{}",
        agent.log()
    );
    // "A few MiB": the allocator may keep some of what it once held.
    let grown = figures.rss_after_kib.saturating_sub(figures.rss_idle_kib);
    assert!(grown <= 8 * 1024, "RSS grew by {grown} KiB: {figures:#?}");
    assert_eq!(agent.log_count("ssh session lost"), 0, "{}", agent.log());
}
