//! `BENCH_STREAMS_ONLY=N`: only the download over N parallel connections,
//! with both load tools, through each tunnel in turn, for many short rounds
//! (about 25 s per round with two tunnels). The full run measures it 5
//! times per tunnel and its spread between runs is as large as the gaps
//! being chased; this gives the per-round ratios of throughput and of
//! each party's CPU per GB with a confidence interval of their median
//! (`ratio`), and with `BENCH_AGENT_B` a second agent build (or the same
//! one under `BENCH_AGENT_B_ENV`, such as `TOKIO_WORKER_THREADS=1`) beside
//! the first in the same run. It also prints what the bench's readers did
//! per GB (reads, sleeps, their CPU and their sources': `load::ReaderCounts`),
//! which tells how each tunnel's writes reach them.

use crate::cost::{Parties, Transfer};
use crate::load::{ReaderCounts, throughput};
use crate::ratio::Ratios;
use crate::{Tunnel, charged, iperf};

/// One round through one tunnel: the bench's readers, then iperf3.
type Pair = (Transfer, Transfer);
/// Which of a round's two transfers (the bench's readers or iperf3's).
type Tool = fn(&Pair) -> &Transfer;
/// Both tables' rows per tunnel, in this order.
const TOOLS: [(&str, Tool); 2] = [("bench", |p| &p.0), ("iperf3", |p| &p.1)];

/// Rounds of (bench reader, iperf3) downloads over `streams` connections
/// through every tunnel, the order rotating each round; prints per-tunnel
/// medians, each agent's per-round ratio against the last tunnel (`ssh -L`).
pub fn run(
    tunnels: &[&Tunnel],
    sshd_pid: u32,
    iperf: &iperf::Server,
    streams: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let n = tunnels.len();
    // samples[tunnel][round] = (bench, iperf3)
    let mut samples: Vec<Vec<Pair>> = vec![Vec::new(); n];
    let mut readers: Vec<Vec<ReaderCounts>> = vec![Vec::new(); n];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}: {streams} stream(s)", round + 1);
        for k in 0..n {
            let i = (round + k) % n;
            let t = tunnels[i];
            let parties = Parties {
                client: t.proc.0.id(),
                sshd: sshd_pid,
                server: None,
            };
            let before = ReaderCounts::now();
            let mut bytes = 0;
            let tool = charged(parties, || {
                throughput(t.ports.source, streams).inspect(|&(_, b)| bytes = b)
            })?;
            readers[i].push(ReaderCounts::now().per_gb(before, bytes));
            let with_iperf = Parties {
                server: Some(iperf.pid()),
                ..parties
            };
            let ip = charged(with_iperf, || iperf::download(t.ports.iperf, streams))?;
            samples[i].push((tool, ip));
        }
    }
    println!("{streams} stream(s) only, {rounds} rounds, order rotating each round\n");
    println!(
        "| | tool | Gbit/s | client ms/GB | sshd ms/GB | tool ms/GB | whole path ms/GB | client writes/MB | client sleeps/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (t, rounds) in tunnels.iter().zip(&samples) {
        for (tool, pick) in TOOLS {
            let transfers: Vec<Transfer> = rounds.iter().map(|r| *pick(r)).collect();
            let m = Transfer::median(&transfers);
            println!(
                "| {} | {tool} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
                t.label,
                m.gbit,
                m.client_ms_gb,
                m.sshd_ms_gb,
                m.tool_ms_gb,
                m.path_ms_gb(),
                m.writes_per_mb,
                m.client_sleeps_gb
            );
        }
    }
    println!(
        "\nthe bench's {streams} reader(s) per GB, median of rounds: how the tunnel's writes reach them\n"
    );
    println!("| | reads | sleeps | readers' CPU ms | sources' CPU ms |");
    println!("|---|---|---|---|---|");
    for (t, rounds) in tunnels.iter().zip(&readers) {
        let m = |f: fn(&ReaderCounts) -> f64| crate::median(rounds.iter().map(f));
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            t.label,
            m(|r| r.reads),
            m(|r| r.sleeps),
            m(|r| r.reader_ms),
            m(|r| r.source_ms)
        );
    }
    let reference = &samples[n - 1];
    println!(
        "\nper-round ratios against {}: median [95% confidence interval of the median] (min-max); \
         the interval tells a gap from the spread between rounds\n",
        tunnels[n - 1].label
    );
    println!(
        "| | tool | throughput | client CPU/GB | sshd CPU/GB | tool CPU/GB | whole path CPU/GB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (t, rounds) in tunnels.iter().zip(&samples).take(n - 1) {
        for (tool, pick) in TOOLS {
            let ratio = |f: fn(&Transfer) -> f64| {
                let of = |rs: &[Pair]| rs.iter().map(|r| f(pick(r))).collect::<Vec<_>>();
                Ratios::of(of(rounds), of(reference)).map_or("-".into(), |r| r.to_string())
            };
            println!(
                "| {} | {tool} | {} | {} | {} | {} | {} |",
                t.label,
                ratio(|x| x.gbit),
                ratio(|x| x.client_ms_gb),
                ratio(|x| x.sshd_ms_gb),
                ratio(|x| x.tool_ms_gb),
                ratio(Transfer::path_ms_gb),
            );
        }
    }
    Ok(())
}
