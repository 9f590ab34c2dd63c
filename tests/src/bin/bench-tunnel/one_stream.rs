//! `BENCH_ONE_STREAM=1`: only the one-stream download, with both load tools,
//! through each tunnel in turn, for many short rounds (about 25 s per round
//! with two tunnels). The full run measures it 5 times per tunnel and its
//! spread between runs is as large as the gap being chased; this gives
//! the per-round ratios and their spread, and with `BENCH_AGENT_B` a
//! second agent build (or the same one under `BENCH_AGENT_B_ENV`, such as
//! `TOKIO_WORKER_THREADS=1`) beside the first in the same run.

use crate::cost::{Parties, Transfer};
use crate::{Tunnel, charged, iperf, median, throughput};

/// Rounds of (bench reader, iperf3) one-stream downloads through every
/// tunnel, the order rotating each round; prints per-tunnel medians, each
/// agent's per-round ratio against the last tunnel (`ssh -L`).
pub fn run(
    tunnels: &[&Tunnel],
    sshd_pid: u32,
    iperf: &iperf::Server,
    rounds: usize,
) -> anyhow::Result<()> {
    let n = tunnels.len();
    // samples[tunnel][round] = (bench, iperf3)
    let mut samples: Vec<Vec<(Transfer, Transfer)>> = vec![Vec::new(); n];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}: one stream", round + 1);
        for k in 0..n {
            let i = (round + k) % n;
            let t = tunnels[i];
            let parties = Parties {
                client: t.proc.0.id(),
                sshd: sshd_pid,
                server: None,
            };
            let tool = charged(parties, || throughput(t.ports.source, 1))?;
            let with_iperf = Parties {
                server: Some(iperf.pid()),
                ..parties
            };
            let ip = charged(with_iperf, || iperf::download(t.ports.iperf, 1))?;
            samples[i].push((tool, ip));
        }
    }
    println!("one stream only, {rounds} rounds, order rotating each round\n");
    println!(
        "| | tool | Gbit/s | client ms/GB | sshd ms/GB | tool ms/GB | whole path ms/GB | client sleeps/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (t, rounds) in tunnels.iter().zip(&samples) {
        for (tool, pick) in [("bench", 0), ("iperf3", 1)] {
            let m = Transfer::median(
                &rounds
                    .iter()
                    .map(|r| if pick == 0 { r.0 } else { r.1 })
                    .collect::<Vec<_>>(),
            );
            println!(
                "| {} | {tool} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                t.label,
                m.gbit,
                m.client_ms_gb,
                m.sshd_ms_gb,
                m.tool_ms_gb,
                m.path_ms_gb(),
                m.client_sleeps_gb
            );
        }
    }
    let reference = &samples[n - 1];
    println!(
        "\nper-round throughput ratio against {}: median (min-max); whole path CPU/GB ratio: median\n",
        tunnels[n - 1].label
    );
    println!("| | bench | iperf3 | whole path, bench | whole path, iperf3 |");
    println!("|---|---|---|---|---|");
    for (t, rounds) in tunnels.iter().zip(&samples).take(n - 1) {
        let ratios = |f: fn(&(Transfer, Transfer)) -> f64| {
            let r: Vec<f64> = rounds
                .iter()
                .zip(reference)
                .map(|(a, b)| f(a) / f(b))
                .collect();
            let (lo, hi) = r
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            (median(r.into_iter()), lo, hi)
        };
        let fmt = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2}x ({lo:.2}-{hi:.2})");
        println!(
            "| {} | {} | {} | {:.2}x | {:.2}x |",
            t.label,
            fmt(ratios(|r| r.0.gbit)),
            fmt(ratios(|r| r.1.gbit)),
            ratios(|r| r.0.path_ms_gb()).0,
            ratios(|r| r.1.path_ms_gb()).0,
        );
    }
    Ok(())
}
