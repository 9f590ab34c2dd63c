//! Tunnel benchmark: `portplane-agent run` against OpenSSH
//! `ssh -F <same ssh.config> -o ControlMaster=no -N -L ...`, side by side,
//! through the same real sshd in the same run, to loopback targets only.
//!
//! Two load tools move the bytes: this program's own readers and Debian's
//! iperf3 (`-R`: the server behind sshd sends); for each transfer it reads
//! from /proc the CPU time of the tunnel client, of sshd and of the load
//! tool, and the tunnel client's write syscalls, per byte delivered. Then
//! a real Kubernetes client (kube-rs) sends `GET /version` to a real
//! kube-apiserver through each tunnel.
//!
//! Run it with `scripts/bench-tunnel` (`make bench-tunnel`), which builds
//! everything in release mode first. Prints Markdown tables for
//! BENCHMARKS.md.

mod cost;
mod iperf;
mod kube_client;
mod load;
mod ratio;
mod streams_only;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cost::{Parties, Snapshot, Transfer};
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::sshd::Sshd;
use portplane_e2e::{free_port, procfs, soak};

pub(crate) const THROUGHPUT_SECS: u64 = 4;
/// Alternating rounds (agent, ssh, agent, ...); BENCH_ROUNDS overrides.
const ROUNDS: usize = 5;
const NEW_CONN_SAMPLES: usize = 500;
const RTT_SAMPLES: usize = 3000;
/// Kubernetes-client requests per tunnel, spread over the rounds: over one
/// kept-alive connection (enough samples for a p99 that is not one or two
/// outliers), and each over a new connection (4-5 ms each).
const KUBE_KEEP_ALIVE_REQUESTS: usize = 5000;
const KUBE_NEW_CONNECTIONS: usize = 1000;

pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Tunnel {
    label: &'static str,
    proc: Guard,
    ports: Ports,
}

/// Loopback ports: behind sshd (the targets) or a tunnel's listeners.
#[derive(Clone, Copy)]
struct Ports {
    echo: u16,
    /// Sends without end (downloads).
    source: u16,
    /// Reads and discards (uploads; `load::drain_conn`).
    drain: u16,
    iperf: u16,
    kube: u16,
}

impl Ports {
    fn free() -> std::io::Result<Ports> {
        Ok(Ports {
            echo: free_port()?,
            source: free_port()?,
            drain: free_port()?,
            iperf: free_port()?,
            kube: free_port()?,
        })
    }

    fn forwards(self, targets: Ports) -> [(&'static str, u16, u16); 5] {
        [
            ("echo", self.echo, targets.echo),
            ("source", self.source, targets.source),
            ("drain", self.drain, targets.drain),
            ("iperf", self.iperf, targets.iperf),
            ("kube", self.kube, targets.kube),
        ]
    }
}

/// One round through one tunnel.
#[derive(Default)]
struct Round {
    tool_1: Transfer,
    tool_4: Transfer,
    iperf_1: Transfer,
    iperf_4: Transfer,
    upload_gbit_1: f64,
    rss_load: f64,
    /// Latency samples in ms, taken interleaved with the other tunnel's.
    new_conn: Vec<f64>,
    round_trip: Vec<f64>,
    kube_keep_alive: Vec<f64>,
    kube_new: Vec<f64>,
}

/// One figure of a round, such as its new-connection p50 in ms.
type RoundFigure = fn(&Round) -> f64;

/// Medians of a tunnel's rounds (latency percentiles: over all samples).
struct Summary {
    tool_1: Transfer,
    tool_4: Transfer,
    iperf_1: Transfer,
    iperf_4: Transfer,
    upload_gbit_1: f64,
    /// p50 and p99, ms, over all rounds' samples.
    new_conn: (f64, f64),
    round_trip: (f64, f64),
    rss_idle: f64,
    rss_load: f64,
    kube_keep_alive: (f64, f64),
    kube_new: (f64, f64),
    recovery: String,
}

impl Summary {
    fn of(rounds: &[Round], rss_idle: f64) -> Summary {
        let t =
            |f: fn(&Round) -> Transfer| Transfer::median(&rounds.iter().map(f).collect::<Vec<_>>());
        let all =
            |f: fn(&Round) -> &Vec<f64>| percentiles(rounds.iter().flat_map(f).copied().collect());
        Summary {
            tool_1: t(|r| r.tool_1),
            tool_4: t(|r| r.tool_4),
            iperf_1: t(|r| r.iperf_1),
            iperf_4: t(|r| r.iperf_4),
            upload_gbit_1: median(rounds.iter().map(|r| r.upload_gbit_1)),
            new_conn: all(|r| &r.new_conn),
            round_trip: all(|r| &r.round_trip),
            rss_idle,
            rss_load: rounds.iter().map(|r| r.rss_load).fold(0.0, f64::max),
            kube_keep_alive: all(|r| &r.kube_keep_alive),
            kube_new: all(|r| &r.kube_new),
            recovery: String::new(),
        }
    }
}

/// What every round needs besides the tunnel.
struct Bench {
    sshd_pid: u32,
    iperf: iperf::Server,
    runtime: tokio::runtime::Runtime,
    kubeconfig: PathBuf,
    /// Kubernetes-client requests per tunnel and round: kept alive, new.
    kube_per_round: (usize, usize),
}

fn main() -> anyhow::Result<()> {
    let agent_bin = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: bench-tunnel <path to release portplane-agent>")?;
    let mut sshd = Sshd::start()?;
    if std::env::var_os("BENCH_SOAK_ONLY").is_some() {
        let work = tempfile::tempdir()?;
        return print_soak(&agent_bin, &sshd, &work);
    }
    let iperf = iperf::Server::start()?;
    let mut targets = Ports {
        echo: load::serve("echo", load::echo_conn),
        source: load::serve("source", load::source_conn),
        drain: load::serve("drain", load::drain_conn),
        iperf: iperf.port,
        // Set below once kube-apiserver is up (BENCH_STREAMS_ONLY needs none).
        kube: 0,
    };
    let work = tempfile::tempdir()?;
    if let Some(streams) = std::env::var("BENCH_STREAMS_ONLY")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        targets.kube = targets.echo;
        return streams_only(&agent_bin, &sshd, targets, &iperf, &work, streams.max(1));
    }
    let plane = ControlPlane::start().context("starting kube-apiserver (scripts/cluster)")?;
    targets.kube = plane.apiserver_port()?;

    let agent = start_agent(&agent_bin, &sshd, targets, &work, "portplane-agent", &[])?;
    let ssh = start_ssh(&sshd, targets)?;
    for tunnel in [&agent, &ssh] {
        wait_echo(tunnel.ports.echo, Duration::from_secs(30))
            .with_context(|| format!("{} never came up", tunnel.label))?;
    }
    // BENCH_HOLD: both tunnels up, for probing by hand (strace, perf), until
    // a line (or EOF) on stdin.
    if std::env::var_os("BENCH_HOLD").is_some() {
        for t in [&agent, &ssh] {
            let p = t.ports;
            println!(
                "{}: pid {}, echo 127.0.0.1:{}, source {}, iperf3 {}, kube {}",
                t.label,
                t.proc.0.id(),
                p.echo,
                p.source,
                p.iperf,
                p.kube
            );
        }
        std::io::stdin().read_line(&mut String::new())?;
        return Ok(());
    }
    if let Some(dir) = std::env::var_os("BENCH_PROFILE") {
        return profile(&[&agent, &ssh], &PathBuf::from(dir));
    }
    let idle = [rss_mib(agent.proc.0.id()), rss_mib(ssh.proc.0.id())];
    let rounds = rounds_or(ROUNDS);
    let bench = Bench {
        sshd_pid: sshd.pid().context("sshd is not running")?,
        iperf,
        runtime: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
        kubeconfig: plane.kubeconfig().to_path_buf(),
        kube_per_round: (
            KUBE_KEEP_ALIVE_REQUESTS.div_ceil(rounds),
            KUBE_NEW_CONNECTIONS.div_ceil(rounds),
        ),
    };
    // BENCH_LATENCY_ONLY: only new connections, round trips and the
    // Kubernetes client (1-2 minutes, for work on the connect path).
    let latency_only = std::env::var_os("BENCH_LATENCY_ONLY").is_some();
    // The machine is shared: alternate agent and ssh within each round and
    // keep the median of the rounds, so background load hits both alike.
    // Latency samples alternate one by one.
    let mut samples: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    let mut load = Vec::new();
    for round in 0..rounds {
        load.push(loadavg());
        let mut pair = [Round::default(), Round::default()];
        if !latency_only {
            // Agent first in odd rounds, ssh first in even ones, so that
            // neither always takes the first transfer after the latency
            // part (a thousand TLS handshakes at kube-apiserver).
            for i in turns(round) {
                let tunnel = [&agent, &ssh][i];
                eprintln!("round {}/{rounds}: {}", round + 1, tunnel.label);
                pair[i] = measure(tunnel, &bench)?;
                eprintln!(
                    "  1 stream {:.2} / {:.2} Gbit/s (bench / iperf3)",
                    pair[i].tool_1.gbit, pair[i].iperf_1.gbit
                );
            }
        }
        eprintln!("round {}/{rounds}: latency, interleaved", round + 1);
        measure_latency([&agent, &ssh], &bench, &mut pair)?;
        for (i, r) in pair.into_iter().enumerate() {
            samples[i].push(r);
        }
    }
    load.push(loadavg());
    if latency_only {
        print_latency(&[&agent, &ssh], &samples, rounds, &load);
        return Ok(());
    }
    let mut rows: Vec<Summary> = samples
        .iter()
        .zip(idle)
        .map(|(rounds, rss_idle)| Summary::of(rounds, rss_idle))
        .collect();

    // Recovery: sshd killed (with its sessions) and started again; time from
    // sshd accepting until an echo through the tunnel succeeds.
    let mut recoveries = Vec::new();
    for _ in 0..5 {
        sshd.stop();
        std::thread::sleep(Duration::from_millis(300));
        sshd.restart()?;
        let back = Instant::now();
        wait_echo(agent.ports.echo, Duration::from_secs(30))?;
        recoveries.push(back.elapsed().as_secs_f64() * 1000.0);
    }
    recoveries.sort_by(f64::total_cmp);
    rows[0].recovery = format!(
        "median {:.0} ms, max {:.0} ms (5 restarts)",
        recoveries[recoveries.len() / 2],
        recoveries[recoveries.len() - 1]
    );
    rows[1].recovery = match wait_echo(ssh.ports.echo, Duration::from_secs(5)) {
        Ok(()) => "recovered".into(),
        Err(_) => "never (ssh -L does not reconnect)".into(),
    };
    print_tables(&[&agent, &ssh], &rows, rounds, &load, &bench);
    drop(ssh);
    drop(agent);
    drop(plane);
    print_soak(&agent_bin, &sshd, &work)
}

/// `BENCH_STREAMS_ONLY=N`: the agent, optionally a second agent
/// (`BENCH_AGENT_B`, a path, default the same binary, run with
/// `BENCH_AGENT_B_ENV`'s space-separated `KEY=VALUE`s), and `ssh -L`, N
/// streams each in turn (`streams_only`).
fn streams_only(
    agent_bin: &PathBuf,
    sshd: &Sshd,
    targets: Ports,
    iperf: &iperf::Server,
    work: &tempfile::TempDir,
    streams: usize,
) -> anyhow::Result<()> {
    // Each agent's own config, configs to rewrite and status socket.
    let dirs = [
        tempfile::tempdir_in(work.path())?,
        tempfile::tempdir_in(work.path())?,
    ];
    let mut tunnels = vec![start_agent(
        agent_bin,
        sshd,
        targets,
        &dirs[0],
        "portplane-agent",
        &[],
    )?];
    let b_bin = std::env::var_os("BENCH_AGENT_B").map(PathBuf::from);
    let b_env: Vec<(String, String)> = std::env::var("BENCH_AGENT_B_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if b_bin.is_some() || !b_env.is_empty() {
        let bin = b_bin.as_ref().unwrap_or(agent_bin);
        tunnels.push(start_agent(
            bin, sshd, targets, &dirs[1], "agent B", &b_env,
        )?);
        eprintln!("agent B: {} {b_env:?}", bin.display());
    }
    tunnels.push(start_ssh(sshd, targets)?);
    for tunnel in &tunnels {
        wait_echo(tunnel.ports.echo, Duration::from_secs(30))
            .with_context(|| format!("{} never came up", tunnel.label))?;
    }
    let rounds = rounds_or(10);
    let refs: Vec<&Tunnel> = tunnels.iter().collect();
    let _spinners = load::busy_cpus()?;
    streams_only::run(
        &refs,
        sshd.pid().context("sshd is not running")?,
        iperf,
        streams,
        rounds,
    )
}

/// `BENCH_ROUNDS`, else `default`; at least 1.
fn rounds_or(default: usize) -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// The latency table alone, with each round's figures so the spread
/// between rounds shows beside the medians.
fn print_latency(
    tunnels: &[&Tunnel; 2],
    samples: &[Vec<Round>; 2],
    rounds: usize,
    load: &[String],
) {
    println!("latency only, {rounds} alternating rounds");
    println!(
        "load average at the start of each round and at the end: {}\n",
        load.join(" | ")
    );
    println!(
        "| | new conn+echo p50 / p99 ms | round trip p50 / p99 ms | kube keep-alive p50 / p99 ms | kube new connection p50 / p99 ms | new conn p50 per round |"
    );
    println!("|---|---|---|---|---|---|");
    let mut p50s = [0.0; 2];
    let mut kube = [(0.0, 0.0); 2];
    for (i, (t, rounds)) in tunnels.iter().zip(samples).enumerate() {
        let s = Summary::of(rounds, 0.0);
        p50s[i] = s.new_conn.0;
        kube[i] = s.kube_keep_alive;
        let per_round: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.3}", percentiles(r.new_conn.clone()).0))
            .collect();
        println!(
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {} |",
            t.label,
            s.new_conn.0,
            s.new_conn.1,
            s.round_trip.0,
            s.round_trip.1,
            s.kube_keep_alive.0,
            s.kube_keep_alive.1,
            s.kube_new.0,
            s.kube_new.1,
            per_round.join(" "),
        );
    }
    println!(
        "\nagent / ssh: new conn p50 {:.2}x, kube keep-alive p50 {:.2}x, p99 {:.2}x",
        p50s[0] / p50s[1],
        kube[0].0 / kube[1].0,
        kube[0].1 / kube[1].1,
    );
    println!(
        "\nper-round ratios, agent / ssh: median [95% confidence interval of the median] (min-max)\n"
    );
    println!("| per round | agent / ssh | 1.0 against the interval |");
    println!("|---|---|---|");
    let figures: [(&str, RoundFigure); 5] = [
        ("new conn+echo p50", |r| percentiles(r.new_conn.clone()).0),
        ("round trip p50", |r| percentiles(r.round_trip.clone()).0),
        ("kube keep-alive p50", |r| {
            percentiles(r.kube_keep_alive.clone()).0
        }),
        ("kube keep-alive p99", |r| {
            percentiles(r.kube_keep_alive.clone()).1
        }),
        ("kube new connection p50", |r| {
            percentiles(r.kube_new.clone()).0
        }),
    ];
    for (name, figure) in figures {
        let of = |rounds: &[Round]| rounds.iter().map(figure).collect::<Vec<_>>();
        if let Some(r) = ratio::Ratios::of(of(&samples[0]), of(&samples[1])) {
            println!("| {name} | {r} | {} |", r.verdict());
        }
    }
}

fn print_tables(
    tunnels: &[&Tunnel; 2],
    rows: &[Summary],
    rounds: usize,
    load: &[String],
    bench: &Bench,
) {
    println!("medians of {rounds} alternating rounds; RSS under load is the peak");
    println!(
        "load average (1, 5, 15 min) at the start of each round and at the end: {}\n",
        load.join(" | ")
    );
    println!(
        "| | 1 stream Gbit/s (bench / iperf3) | 4 streams Gbit/s (bench / iperf3) | upload, 1 stream Gbit/s | new conn+echo p50 / p99 ms | round trip p50 / p99 ms | RSS idle / under load MiB | recovery after sshd restart |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (t, r) in tunnels.iter().zip(rows) {
        println!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:.1} / {:.1} | {} |",
            t.label,
            r.tool_1.gbit,
            r.iperf_1.gbit,
            r.tool_4.gbit,
            r.iperf_4.gbit,
            r.upload_gbit_1,
            r.new_conn.0,
            r.new_conn.1,
            r.round_trip.0,
            r.round_trip.1,
            r.rss_idle,
            r.rss_load,
            r.recovery
        );
    }
    // Throughput swings with the machine's other load; CPU per byte swings
    // less, and says where a 2-core machine's cycles go.
    println!(
        "\nCPU ms per GB delivered, the tunnel client's write syscalls per MB and its sleeps (voluntary context switches) per GB (medians):\n"
    );
    println!(
        "| load tool, streams | tunnel | client ms/GB | sshd ms/GB | load tool ms/GB | whole path ms/GB | client writes/MB | client sleeps/GB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    type Pick = fn(&Summary) -> Transfer;
    let kinds: [(&str, Pick); 4] = [
        ("bench, 1", |s| s.tool_1),
        ("bench, 4", |s| s.tool_4),
        ("iperf3 -R, 1", |s| s.iperf_1),
        ("iperf3 -R, 4", |s| s.iperf_4),
    ];
    for (kind, get) in kinds {
        for (t, r) in tunnels.iter().zip(rows) {
            let x = get(r);
            println!(
                "| {kind} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
                t.label,
                x.client_ms_gb,
                x.sshd_ms_gb,
                x.tool_ms_gb,
                x.path_ms_gb(),
                x.writes_per_mb,
                x.client_sleeps_gb
            );
        }
    }
    println!(
        "\nKubernetes client (kube-rs) GET /version through each tunnel, in turns: {} requests per tunnel over one kept-alive connection, {} over new connections:\n",
        bench.kube_per_round.0 * rounds,
        bench.kube_per_round.1 * rounds,
    );
    println!("| | one kept-alive connection p50 / p99 ms | new connection each p50 / p99 ms |");
    println!("|---|---|---|");
    for (t, r) in tunnels.iter().zip(rows) {
        println!(
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} |",
            t.label, r.kube_keep_alive.0, r.kube_keep_alive.1, r.kube_new.0, r.kube_new.1
        );
    }
    let (a, s) = (&rows[0], &rows[1]);
    let ratio = |x: f64, y: f64| x / y;
    println!("\nagent / ssh, same run:\n");
    println!("| | bench | iperf3 |");
    println!("|---|---|---|");
    println!(
        "| 1 stream throughput | {:.2}x | {:.2}x |",
        ratio(a.tool_1.gbit, s.tool_1.gbit),
        ratio(a.iperf_1.gbit, s.iperf_1.gbit)
    );
    println!(
        "| 4 streams throughput | {:.2}x | {:.2}x |",
        ratio(a.tool_4.gbit, s.tool_4.gbit),
        ratio(a.iperf_4.gbit, s.iperf_4.gbit)
    );
    println!(
        "| tunnel client CPU/GB, 1 stream | {:.2}x | {:.2}x |",
        ratio(a.tool_1.client_ms_gb, s.tool_1.client_ms_gb),
        ratio(a.iperf_1.client_ms_gb, s.iperf_1.client_ms_gb)
    );
    println!(
        "| tunnel client CPU/GB, 4 streams | {:.2}x | {:.2}x |",
        ratio(a.tool_4.client_ms_gb, s.tool_4.client_ms_gb),
        ratio(a.iperf_4.client_ms_gb, s.iperf_4.client_ms_gb)
    );
    println!(
        "| whole path CPU/GB, 1 stream | {:.2}x | {:.2}x |",
        ratio(a.tool_1.path_ms_gb(), s.tool_1.path_ms_gb()),
        ratio(a.iperf_1.path_ms_gb(), s.iperf_1.path_ms_gb())
    );
    println!(
        "| whole path CPU/GB, 4 streams | {:.2}x | {:.2}x |",
        ratio(a.tool_4.path_ms_gb(), s.tool_4.path_ms_gb()),
        ratio(a.iperf_4.path_ms_gb(), s.iperf_4.path_ms_gb())
    );
    println!(
        "| client writes per MB, 1 stream | {:.2}x | {:.2}x |",
        ratio(a.tool_1.writes_per_mb, s.tool_1.writes_per_mb),
        ratio(a.iperf_1.writes_per_mb, s.iperf_1.writes_per_mb)
    );
    println!(
        "\nupload {:.2}x, new conn+echo p50 {:.2}x, kube keep-alive p50 / p99 {:.2}x / {:.2}x, kube new connection p50 / p99 {:.2}x / {:.2}x",
        ratio(a.upload_gbit_1, s.upload_gbit_1),
        ratio(a.new_conn.0, s.new_conn.0),
        ratio(a.kube_keep_alive.0, s.kube_keep_alive.0),
        ratio(a.kube_keep_alive.1, s.kube_keep_alive.1),
        ratio(a.kube_new.0, s.kube_new.0),
        ratio(a.kube_new.1, s.kube_new.1),
    );
}

/// BENCH_PROFILE=<dir>: a download through each tunnel in turn (the bench's
/// own reader, `BENCH_PROFILE_STREAMS` streams, 1 unless set) under
/// `perf record -g` (DWARF call graphs) of the tunnel client; writes
/// `<dir>/<agent|ssh>.perf.data` and prints how to read them. With
/// `BENCH_PROFILE_SYSTEM` set, the download is recorded system-wide instead
/// (`perf record -a`, kernel and user stacks by frame pointer; every party on
/// the path: sshd, the tunnel client, the load tool's `reader` and `source`
/// threads), to compare with `perf report --sort comm`. Then the same for new
/// connections, and their syscalls.
fn profile(tunnels: &[&Tunnel; 2], dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let streams = match std::env::var("BENCH_PROFILE_STREAMS") {
        Ok(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .with_context(|| {
                format!("BENCH_PROFILE_STREAMS={n}: expected a number of streams from 1 to 64")
            })?,
        Err(_) => 1,
    };
    let sleep_secs = (THROUGHPUT_SECS + 1).to_string();
    let system = std::env::var_os("BENCH_PROFILE_SYSTEM").is_some();
    for (tunnel, name) in tunnels.iter().zip(["agent", "ssh"]) {
        let out = dir.join(format!("{name}.perf.data"));
        let mut perf = attach(
            "perf",
            &[
                "record",
                "--call-graph",
                if system { "fp" } else { "dwarf,16384" },
                "-F",
                "999",
            ],
            &out,
            (!system).then_some(tunnel),
            &["--", "sleep", &sleep_secs],
        )?;
        let before = load::ReaderCounts::now();
        let (gbit, bytes) = load::throughput(tunnel.ports.source, streams)?;
        let readers = load::ReaderCounts::now().per_gb(before, bytes);
        perf.0.wait()?;
        println!(
            "{}: {gbit:.2} Gbit/s on {streams} stream(s); per GB the bench's readers read {:.0} times, slept {:.0} times and took {:.0} ms of CPU, their sources {:.0} ms; recorded to {}",
            tunnel.label,
            readers.reads,
            readers.sleeps,
            readers.reader_ms,
            readers.source_ms,
            out.display()
        );
    }
    // The connect path: a profile and the syscalls of CONNECT_PROFILE_SAMPLES
    // new connections with one echo each.
    for (tunnel, name) in tunnels.iter().zip(["agent", "ssh"]) {
        let out = dir.join(format!("{name}.connect.perf.data"));
        let mut perf = attach(
            "perf",
            &["record", "--call-graph", "dwarf,16384", "-F", "4999"],
            &out,
            Some(tunnel),
            &[],
        )?;
        // Let the tracer attach before the first connection.
        std::thread::sleep(Duration::from_millis(500));
        let (p50, _) = new_connection_latency(tunnel.ports.echo, CONNECT_PROFILE_SAMPLES)?;
        stop_gracefully(&mut perf.0)?;
        let trace = dir.join(format!("{name}.connect.strace"));
        let mut strace = attach("strace", &["-f", "-c"], &trace, Some(tunnel), &[])?;
        std::thread::sleep(Duration::from_millis(500));
        new_connection_latency(tunnel.ports.echo, CONNECT_PROFILE_SAMPLES)?;
        stop_gracefully(&mut strace.0)?;
        println!(
            "{}: new conn p50 {p50:.3} ms while recorded to {}; syscalls of {CONNECT_PROFILE_SAMPLES} connections in {}",
            tunnel.label,
            out.display(),
            trace.display()
        );
    }
    println!(
        "\nread with: perf report -i <file> --no-children --sort symbol --stdio -g none \
         (or --children for inclusive figures)"
    );
    Ok(())
}

const CONNECT_PROFILE_SAMPLES: usize = 2000;

/// `program <args> -o <out> -p <tunnel client pid> <tail>`, quiet: perf or
/// strace attached to the tunnel client (scripts/deps installs both); with
/// no tunnel, `-a` (the whole system) instead of `-p`.
fn attach(
    program: &str,
    args: &[&str],
    out: &std::path::Path,
    tunnel: Option<&Tunnel>,
    tail: &[&str],
) -> anyhow::Result<Guard> {
    let target = match tunnel {
        Some(t) => vec!["-p".to_string(), t.proc.0.id().to_string()],
        None => vec!["-a".to_string()],
    };
    let child = Command::new(program)
        .args(args)
        .arg("-o")
        .arg(out)
        .args(target)
        .args(tail)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("{program} (scripts/deps {program} installs it)"))?;
    Ok(Guard(child))
}

/// SIGINT, so perf and strace write what they recorded, then wait.
fn stop_gracefully(child: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    child.wait()?;
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The churn soak (`portplane_e2e::soak`) through a fresh agent: 1,000
/// connections, 100 stalled and cut, 100 resets, 200 early closes; what it
/// left behind. Agent only: `ssh -L` never cuts a stalled client, so the
/// same plan would only measure its 100 held channels.
fn print_soak(bin: &PathBuf, sshd: &Sshd, work: &tempfile::TempDir) -> anyhow::Result<()> {
    let plan = soak::Plan::standard();
    let targets = soak::Targets::start(plan.download_bytes)?;
    let listen = soak::Listen {
        stall: free_port()?,
        reset: free_port()?,
        early: free_port()?,
        echo: free_port()?,
        bulk: free_port()?,
    };
    let forwards = [
        ("echo", listen.echo, targets.echo.port),
        ("stall", listen.stall, targets.stall.port),
        ("reset", listen.reset, targets.reset.port),
        ("early", listen.early, targets.early.port),
        ("bulk", listen.bulk, targets.bulk.port),
    ];
    let mut config = format!(
        "name = \"soak\"\n[ssh]\nconfig = \"{}\"\nhost = \"{}\"\n",
        sshd.ssh_config_path().display(),
        sshd.host_alias(),
    );
    for (name, listen, target) in forwards {
        config.push_str(&format!(
            "[[forward]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{listen}\"\ntarget = \"127.0.0.1:{target}\"\n"
        ));
    }
    config.push_str(&format!(
        "[kubeconfig]\nforward = \"echo\"\npath = \"{dir}/soak-kubeconfig\"\n\
         [talosconfig]\nforward = \"echo\"\npath = \"{dir}/soak-talosconfig\"\n",
        dir = work.path().display(),
    ));
    let path = work.path().join("soak-agent.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(work.path().join("soak-agent.log"))?;
    let agent = Guard(
        Command::new(bin)
            .env_remove("KUBECONFIG")
            .env_remove("TALOSCONFIG")
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    wait_echo(listen.echo, Duration::from_secs(30)).context("the soak agent never came up")?;
    let figures = soak::run(agent.0.id(), listen, &targets, plan)?;
    println!(
        "\nchurn soak: {} connections, {} stalled (must be cut), {} client resets, {} early server closes; then a {} MiB download read at ~12 MB/s\n",
        plan.connections,
        plan.stalled,
        plan.resets,
        plan.early_closes,
        plan.download_bytes / (1024 * 1024)
    );
    println!("{}", soak::Figures::MARKDOWN_HEADER);
    println!("{}", figures.markdown_row("portplane-agent"));
    for failure in figures.failures.iter().take(10) {
        println!("- failed: {failure}");
    }
    Ok(())
}

/// One round of every measurement through `tunnel`.
fn measure(tunnel: &Tunnel, bench: &Bench) -> anyhow::Result<Round> {
    let pid = tunnel.proc.0.id();
    let parties = Parties {
        client: pid,
        sshd: bench.sshd_pid,
        server: None,
    };
    let mut round = Round {
        tool_1: charged(parties, || load::throughput(tunnel.ports.source, 1))?,
        upload_gbit_1: load::upload(tunnel.ports.drain)?,
        ..Round::default()
    };
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    round.tool_4 = charged(parties, || load::throughput(tunnel.ports.source, 4))?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    round.rss_load = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    let with_iperf = Parties {
        server: Some(bench.iperf.pid()),
        ..parties
    };
    round.iperf_1 = charged(with_iperf, || iperf::download(tunnel.ports.iperf, 1))?;
    round.iperf_4 = charged(with_iperf, || iperf::download(tunnel.ports.iperf, 4))?;
    Ok(round)
}

/// The latency part of a round, through both tunnels at once, one sample
/// each in turn (`interleaved`): new connections, round trips, and the
/// Kubernetes client. A moment of load on the shared machine then falls on
/// both alike instead of on whichever tunnel was being measured.
fn measure_latency(
    tunnels: [&Tunnel; 2],
    bench: &Bench,
    rounds: &mut [Round; 2],
) -> anyhow::Result<()> {
    let ports = tunnels.map(|t| t.ports);
    let [r0, r1] = rounds;
    [r0.new_conn, r1.new_conn] =
        interleaved(NEW_CONN_SAMPLES, |i| timed(|| echo_once(ports[i].echo)))?;
    let mut held = [held_echo(ports[0].echo)?, held_echo(ports[1].echo)?];
    [r0.round_trip, r1.round_trip] =
        interleaved(RTT_SAMPLES, |i| timed(|| round_trip(&mut held[i])))?;
    let (kept, new) = bench.kube_per_round;
    (
        [r0.kube_keep_alive, r1.kube_keep_alive],
        [r0.kube_new, r1.kube_new],
    ) = bench.runtime.block_on(async {
        let configs = [
            kube_client::config_through(&bench.kubeconfig, ports[0].kube).await?,
            kube_client::config_through(&bench.kubeconfig, ports[1].kube).await?,
        ];
        anyhow::Ok((
            kube_client::keep_alive(&configs, kept).await?,
            kube_client::new_connections(&configs, new).await?,
        ))
    })?;
    Ok(())
}

/// Which tunnel goes first in the `k`th pair of samples: 0, 1, then 1, 0,
/// and so on, so that neither always goes first.
fn turns(k: usize) -> [usize; 2] {
    [k % 2, 1 - k % 2]
}

/// `n` samples from each of two tunnels, taken in `turns`.
fn interleaved(
    n: usize,
    mut sample: impl FnMut(usize) -> anyhow::Result<f64>,
) -> anyhow::Result<[Vec<f64>; 2]> {
    let mut out = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for k in 0..n {
        for i in turns(k) {
            out[i].push(sample(i)?);
        }
    }
    Ok(out)
}

/// Milliseconds `f` took.
fn timed(f: impl FnOnce() -> std::io::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Run a transfer (returning Gbit/s and the bytes it delivered) and charge
/// its CPU time and the tunnel client's write syscalls to those bytes.
fn charged(
    parties: Parties,
    transfer: impl FnOnce() -> anyhow::Result<(f64, u64)>,
) -> anyhow::Result<Transfer> {
    let writes = cost::WriteCounter::start(parties.client);
    let before = Snapshot::take(parties);
    let (gbit, bytes) = transfer()?;
    let after = Snapshot::take(parties);
    let writes = writes.and_then(cost::WriteCounter::finish);
    Ok(Transfer::between(before, after, gbit, bytes, writes))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn start_agent(
    bin: &PathBuf,
    sshd: &Sshd,
    targets: Ports,
    work: &tempfile::TempDir,
    label: &'static str,
    env: &[(String, String)],
) -> anyhow::Result<Tunnel> {
    let ports = Ports::free()?;
    // BENCH_AGENT_SESSIONS sets the pool size (default: the agent's own).
    let sessions = std::env::var("BENCH_AGENT_SESSIONS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| format!("sessions = {n}\n"))
        .unwrap_or_default();
    // BENCH_AGENT_NODELAY=0: the agent does not ask sshd for TCP_NODELAY.
    let nodelay = match std::env::var("BENCH_AGENT_NODELAY").as_deref() {
        Ok("0") => "sshd_tcp_nodelay = false\n",
        _ => "",
    };
    let mut config = format!(
        "name = \"bench\"\nsocket = \"{}/agent.sock\"\n[ssh]\n{sessions}{nodelay}config = \"{}\"\nhost = \"{}\"\n",
        work.path().display(),
        sshd.ssh_config_path().display(),
        sshd.host_alias(),
    );
    for (name, listen, target) in ports.forwards(targets) {
        config.push_str(&format!(
            "[[forward]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{listen}\"\ntarget = \"127.0.0.1:{target}\"\n"
        ));
    }
    config.push_str(&format!(
        "[kubeconfig]\nforward = \"echo\"\npath = \"{dir}/kubeconfig\"\n\
         [talosconfig]\nforward = \"echo\"\npath = \"{dir}/talosconfig\"\n",
        dir = work.path().display(),
    ));
    let path = work.path().join("agent.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(work.path().join("agent.log"))?;
    let child = Command::new(bin)
        .env_remove("KUBECONFIG")
        .env_remove("TALOSCONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Tunnel {
        label,
        proc: Guard(child),
        ports,
    })
}

fn start_ssh(sshd: &Sshd, targets: Ports) -> anyhow::Result<Tunnel> {
    let ports = Ports::free()?;
    let mut ssh = Command::new("ssh");
    ssh.arg("-F").arg(sshd.ssh_config_path()).args([
        "-o",
        "ControlMaster=no",
        "-o",
        "ExitOnForwardFailure=yes",
    ]);
    // BENCH_SSH_COMMAND=cat: run a command on the server instead of `-N`.
    // sshd turns on TCP_NODELAY once a session channel runs something, never
    // for a connection that only forwards (the agent's case); this shows what
    // Nagle's algorithm at sshd costs. ssh's stdin is then a pipe held by
    // the child handle, so `cat` ends when the bench does.
    let command = std::env::var("BENCH_SSH_COMMAND").ok();
    if command.is_some() {
        ssh.stdin(Stdio::piped());
    } else {
        ssh.stdin(Stdio::null()).arg("-N");
    }
    for (_, listen, target) in ports.forwards(targets) {
        ssh.args(["-L", &format!("127.0.0.1:{listen}:127.0.0.1:{target}")]);
    }
    let child = ssh.arg(sshd.host_alias()).args(command).spawn()?;
    Ok(Tunnel {
        label: "ssh -L (OpenSSH)",
        proc: Guard(child),
        ports,
    })
}

fn echo_once(port: u16) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ping")?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back)?;
    Ok(())
}

fn wait_echo(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while echo_once(port).is_err() {
        if Instant::now() > deadline {
            bail!("no echo through 127.0.0.1:{port} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.50), at(0.99))
}

/// p50 and p99 of `n` new connections with one echo each, in a row.
fn new_connection_latency(port: u16, n: usize) -> anyhow::Result<(f64, f64)> {
    let samples = (0..n)
        .map(|_| timed(|| echo_once(port)))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(percentiles(samples))
}

/// A connection to an echo forward, kept open for `round_trip`.
fn held_echo(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// 64 bytes to the echo server and back.
fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    let mut back = [0u8; 64];
    s.write_all(&[7u8; 64])?;
    s.read_exact(&mut back)
}

fn rss_mib(pid: u32) -> f64 {
    procfs::status_kib(pid, "VmRSS") as f64 / 1024.0
}
