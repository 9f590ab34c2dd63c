//! `BENCH_STREAMS_ONLY=N`: only the download over N parallel connections,
//! with both load tools, through each tunnel in turn, for many short rounds
//! (about 25 s per round with two tunnels). The full run measures it 5
//! times per tunnel and its spread between runs is as large as the gaps
//! being chased; this gives the per-round ratios, a confidence interval
//! of their median, and with `BENCH_AGENT_B` a second agent build (or the
//! same one under `BENCH_AGENT_B_ENV`, such as `TOKIO_WORKER_THREADS=1`)
//! beside the first in the same run.

use crate::cost::{Parties, Transfer};
use crate::{Tunnel, charged, iperf, throughput};

/// One round through one tunnel: the bench's readers, then iperf3.
type Pair = (Transfer, Transfer);

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
            let tool = charged(parties, || throughput(t.ports.source, streams))?;
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
        let bench: Vec<Transfer> = rounds.iter().map(|r| r.0).collect();
        let iperf3: Vec<Transfer> = rounds.iter().map(|r| r.1).collect();
        for (tool, transfers) in [("bench", bench), ("iperf3", iperf3)] {
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
    let reference = &samples[n - 1];
    println!(
        "\nper-round throughput ratio against {}: median [95% confidence interval of the median] (min-max); whole path CPU/GB ratio: median\n",
        tunnels[n - 1].label
    );
    println!("| | bench | iperf3 | whole path, bench | whole path, iperf3 |");
    println!("|---|---|---|---|---|");
    for (t, rounds) in tunnels.iter().zip(&samples).take(n - 1) {
        let ratios = |f: fn(&Pair) -> f64| {
            let mut r: Vec<f64> = rounds
                .iter()
                .zip(reference)
                .map(|(a, b)| f(a) / f(b))
                .collect();
            r.sort_by(f64::total_cmp);
            let (lo, hi) = median_interval(r.len());
            // Sorted already: the median is `crate::median`'s middle element.
            (r[r.len() / 2], r[lo], r[hi], r[0], r[r.len() - 1])
        };
        let fmt = |(m, lo, hi, min, max): (f64, f64, f64, f64, f64)| {
            format!("{m:.2}x [{lo:.2}-{hi:.2}] ({min:.2}-{max:.2})")
        };
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

/// Indices (0-based, into `n` sorted samples) of a distribution-free
/// confidence interval of at least 95% for the median: the k-th smallest
/// and k-th largest, k the largest with P(Binomial(n, 1/2) < k) <= 2.5%
/// (the sign-test interval; e.g. n = 20: the 6th and 15th). With fewer
/// than 6 samples no such k exists, and the interval is the whole range.
pub fn median_interval(n: usize) -> (usize, usize) {
    let mut below = 0.0; // P(X < k), X ~ Binomial(n, 1/2)
    let mut k = 0;
    let mut term = 0.5f64.powi(n as i32); // P(X = k)
    while k < n / 2 && below + term <= 0.025 {
        below += term;
        term *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    // k samples lie below the interval; with k = 0 it is the whole range.
    let lo = k.saturating_sub(1).min(n.saturating_sub(1));
    (lo, n.saturating_sub(1) - lo)
}

#[cfg(test)]
mod tests {
    use super::median_interval;

    #[test]
    fn sign_test_intervals_match_the_tables() {
        // Order statistics (1-based) from the binomial table for 95%:
        // n = 20 -> 6th..15th, n = 10 -> 2nd..9th, n = 6 -> 1st..6th.
        assert_eq!(median_interval(20), (5, 14));
        assert_eq!(median_interval(10), (1, 8));
        assert_eq!(median_interval(6), (0, 5));
        assert_eq!(median_interval(3), (0, 2));
    }
}
