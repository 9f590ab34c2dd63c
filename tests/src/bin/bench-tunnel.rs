//! Tunnel benchmark: `portplane-agent run` (release build) against OpenSSH
//! `ssh -F <same ssh.config> -o ControlMaster=no -N -L ...`, side by side,
//! through the same real sshd in the same run, to loopback targets only.
//!
//! Run it with `scripts/bench-tunnel` (builds the release binaries first).
//! Prints a Markdown table for BENCHMARKS.md.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portplane_e2e::sshd::{Sshd, descendants};
use portplane_e2e::{free_port, procfs, soak};

const THROUGHPUT_SECS: u64 = 4;
/// Alternating rounds (agent, ssh, agent, ...); BENCH_ROUNDS overrides.
const ROUNDS: usize = 5;
const NEW_CONN_SAMPLES: usize = 500;
const RTT_SAMPLES: usize = 3000;

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Tunnel {
    label: &'static str,
    proc: Guard,
    echo_port: u16,
    source_port: u16,
    drain_port: u16,
}

/// The loopback servers behind sshd that every tunnel forwards to.
#[derive(Clone, Copy)]
struct Ends {
    echo: u16,
    /// Sends without end (downloads).
    source: u16,
    /// Reads and discards, counting into DRAINED (uploads).
    drain: u16,
}

/// Bytes the drain server has received, all connections together.
static DRAINED: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Row {
    gbit_1: f64,
    upload_gbit_1: f64,
    gbit_4: f64,
    new_p50: f64,
    new_p99: f64,
    rtt_p50: f64,
    rtt_p99: f64,
    rss_idle: f64,
    rss_load: f64,
    /// CPU milliseconds per GB moved, 4 streams: the tunnel's client
    /// process (agent or ssh) and the sshd processes serving it.
    cpu_client_4: f64,
    cpu_sshd_4: f64,
    /// The same for this process: the readers and the source server behind
    /// sshd (the two ends every set-up shares).
    cpu_ends_4: f64,
    recovery: String,
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
    let ends = Ends {
        echo: serve(echo_conn),
        source: serve(source_conn),
        drain: serve(drain_conn),
    };
    let work = tempfile::tempdir()?;

    let agent = start_agent(&agent_bin, &sshd, ends, &work)?;
    let ssh = start_ssh(&sshd, ends)?;
    for tunnel in [&agent, &ssh] {
        wait_echo(tunnel.echo_port, Duration::from_secs(30))
            .with_context(|| format!("{} never came up", tunnel.label))?;
    }
    let idle = [rss_mib(agent.proc.0.id()), rss_mib(ssh.proc.0.id())];
    // The machine is shared: alternate agent and ssh within each round and
    // keep the median of the rounds, so background load hits both alike.
    let mut samples: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for _ in 0..rounds {
        for (i, tunnel) in [&agent, &ssh].into_iter().enumerate() {
            samples[i].push(measure(tunnel, &sshd)?);
        }
    }
    let mut rows: Vec<Row> = samples
        .iter()
        .zip(idle)
        .map(|(rounds, rss_idle)| Row {
            gbit_1: median(rounds.iter().map(|r| r.gbit_1)),
            upload_gbit_1: median(rounds.iter().map(|r| r.upload_gbit_1)),
            gbit_4: median(rounds.iter().map(|r| r.gbit_4)),
            new_p50: median(rounds.iter().map(|r| r.new_p50)),
            new_p99: median(rounds.iter().map(|r| r.new_p99)),
            rtt_p50: median(rounds.iter().map(|r| r.rtt_p50)),
            rtt_p99: median(rounds.iter().map(|r| r.rtt_p99)),
            rss_idle,
            rss_load: rounds.iter().map(|r| r.rss_load).fold(0.0, f64::max),
            cpu_client_4: median(rounds.iter().map(|r| r.cpu_client_4)),
            cpu_sshd_4: median(rounds.iter().map(|r| r.cpu_sshd_4)),
            cpu_ends_4: median(rounds.iter().map(|r| r.cpu_ends_4)),
            recovery: String::new(),
        })
        .collect();

    // Recovery: sshd killed (with its sessions) and started again; time from
    // sshd accepting until an echo through the tunnel succeeds.
    let mut recoveries = Vec::new();
    for _ in 0..5 {
        sshd.stop();
        std::thread::sleep(Duration::from_millis(300));
        sshd.restart()?;
        let back = Instant::now();
        wait_echo(agent.echo_port, Duration::from_secs(30))?;
        recoveries.push(back.elapsed().as_secs_f64() * 1000.0);
    }
    recoveries.sort_by(f64::total_cmp);
    rows[0].recovery = format!(
        "median {:.0} ms, max {:.0} ms (5 restarts)",
        recoveries[recoveries.len() / 2],
        recoveries[recoveries.len() - 1]
    );
    rows[1].recovery = match wait_echo(ssh.echo_port, Duration::from_secs(5)) {
        Ok(()) => "recovered".into(),
        Err(_) => "never (ssh -L does not reconnect)".into(),
    };

    println!("medians of {rounds} alternating rounds; RSS under load is the peak\n");
    println!(
        "| | 1 stream Gbit/s | 4 streams Gbit/s | upload, 1 stream Gbit/s | new conn+echo p50 / p99 ms | round trip p50 / p99 ms | RSS idle / under load MiB | recovery after sshd restart |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (t, r) in [&agent, &ssh].iter().zip(&rows) {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:.1} / {:.1} | {} |",
            t.label,
            r.gbit_1,
            r.gbit_4,
            r.upload_gbit_1,
            r.new_p50,
            r.new_p99,
            r.rtt_p50,
            r.rtt_p99,
            r.rss_idle,
            r.rss_load,
            r.recovery
        );
    }
    println!(
        "\nratios agent/ssh: 1 stream {:.2}x, 4 streams {:.2}x, upload {:.2}x, new-conn p50 {:.2}x",
        rows[0].gbit_1 / rows[1].gbit_1,
        rows[0].gbit_4 / rows[1].gbit_4,
        rows[0].upload_gbit_1 / rows[1].upload_gbit_1,
        rows[0].new_p50 / rows[1].new_p50
    );
    // Throughput swings with the machine's other load; CPU per byte does
    // not, and says where a 2-core machine's cycles go.
    println!("\nCPU per GB moved, 4 streams (medians):\n");
    println!(
        "| | tunnel client (agent / ssh) ms/GB | sshd ms/GB | both ends (load tool) ms/GB | together ms/GB |"
    );
    println!("|---|---|---|---|---|");
    for (t, r) in [&agent, &ssh].iter().zip(&rows) {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            t.label,
            r.cpu_client_4,
            r.cpu_sshd_4,
            r.cpu_ends_4,
            r.cpu_client_4 + r.cpu_sshd_4 + r.cpu_ends_4
        );
    }
    drop(ssh);
    drop(agent);
    print_soak(&agent_bin, &sshd, &work)
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
fn measure(tunnel: &Tunnel, sshd: &Sshd) -> anyhow::Result<Row> {
    let mut row = Row {
        gbit_1: throughput(tunnel.source_port, 1)?.0,
        upload_gbit_1: upload(tunnel.drain_port)?,
        ..Row::default()
    };
    let sshd_pid = sshd.pid().context("sshd is not running")?;
    let sshd_ticks = || {
        descendants(sshd_pid)
            .into_iter()
            .map(cpu_ticks)
            .sum::<u64>()
    };
    let pid = tunnel.proc.0.id();
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
    let me = std::process::id();
    let (client_before, sshd_before, ends_before) = (cpu_ticks(pid), sshd_ticks(), cpu_ticks(me));
    let bytes;
    (row.gbit_4, bytes) = throughput(tunnel.source_port, 4)?;
    let per_gb = |ticks: u64| ticks as f64 * 1000.0 / ticks_per_second() / (bytes as f64 / 1e9);
    row.cpu_client_4 = per_gb(cpu_ticks(pid) - client_before);
    row.cpu_sshd_4 = per_gb(sshd_ticks().saturating_sub(sshd_before));
    row.cpu_ends_4 = per_gb(cpu_ticks(me) - ends_before);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    row.rss_load = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    (row.new_p50, row.new_p99) = new_connection_latency(tunnel.echo_port)?;
    (row.rtt_p50, row.rtt_p99) = round_trip_latency(tunnel.echo_port)?;
    Ok(row)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn start_agent(
    bin: &PathBuf,
    sshd: &Sshd,
    ends: Ends,
    work: &tempfile::TempDir,
) -> anyhow::Result<Tunnel> {
    let (echo_port, source_port, drain_port) = (free_port()?, free_port()?, free_port()?);
    // BENCH_AGENT_SESSIONS sets the pool size (default: the agent's own).
    let sessions = std::env::var("BENCH_AGENT_SESSIONS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| format!("sessions = {n}\n"))
        .unwrap_or_default();
    let config = format!(
        "name = \"bench\"\n[ssh]\n{sessions}config = \"{}\"\nhost = \"{}\"\n\
         [[forward]]\nname = \"echo\"\nlisten = \"127.0.0.1:{echo_port}\"\ntarget = \"127.0.0.1:{echo}\"\n\
         [[forward]]\nname = \"source\"\nlisten = \"127.0.0.1:{source_port}\"\ntarget = \"127.0.0.1:{source}\"\n\
         [[forward]]\nname = \"drain\"\nlisten = \"127.0.0.1:{drain_port}\"\ntarget = \"127.0.0.1:{drain}\"\n\
         [kubeconfig]\nforward = \"echo\"\npath = \"{dir}/kubeconfig\"\n\
         [talosconfig]\nforward = \"echo\"\npath = \"{dir}/talosconfig\"\n",
        sshd.ssh_config_path().display(),
        sshd.host_alias(),
        echo = ends.echo,
        source = ends.source,
        drain = ends.drain,
        dir = work.path().display(),
    );
    let path = work.path().join("agent.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(work.path().join("agent.log"))?;
    let child = Command::new(bin)
        .env_remove("KUBECONFIG")
        .env_remove("TALOSCONFIG")
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Tunnel {
        label: "portplane-agent",
        proc: Guard(child),
        echo_port,
        source_port,
        drain_port,
    })
}

fn start_ssh(sshd: &Sshd, ends: Ends) -> anyhow::Result<Tunnel> {
    let (echo_port, source_port, drain_port) = (free_port()?, free_port()?, free_port()?);
    let Ends {
        echo,
        source,
        drain,
    } = ends;
    let child = Command::new("ssh")
        .arg("-F")
        .arg(sshd.ssh_config_path())
        .args([
            "-o",
            "ControlMaster=no",
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
        ])
        .args(["-L", &format!("127.0.0.1:{echo_port}:127.0.0.1:{echo}")])
        .args(["-L", &format!("127.0.0.1:{source_port}:127.0.0.1:{source}")])
        .args(["-L", &format!("127.0.0.1:{drain_port}:127.0.0.1:{drain}")])
        .arg(sshd.host_alias())
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Tunnel {
        label: "ssh -L (OpenSSH)",
        proc: Guard(child),
        echo_port,
        source_port,
        drain_port,
    })
}

fn serve(handle: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || handle(stream));
        }
    });
    port
}

fn echo_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 16384];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn source_conn(mut s: TcpStream) {
    let buf = vec![0x5au8; 256 * 1024];
    while s.write_all(&buf).is_ok() {}
}

fn drain_conn(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        DRAINED.fetch_add(n as u64, Ordering::Relaxed);
    }
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

/// Gbit/s received over `streams` parallel connections for THROUGHPUT_SECS,
/// and every byte moved (warm-up included, for CPU per byte).
fn throughput(port: u16, streams: usize) -> anyhow::Result<(f64, u64)> {
    let total = Arc::new(AtomicU64::new(0));
    let all = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECS + 1);
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            let (total, all) = (total.clone(), all.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                let mut buf = vec![0u8; 256 * 1024];
                // One second of warm-up (window growth), then count.
                let count_from = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline {
                    let n = s.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    all.fetch_add(n as u64, Ordering::Relaxed);
                    if Instant::now() >= count_from {
                        total.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    Ok((
        total.load(Ordering::Relaxed) as f64 * 8.0 / 1e9 / THROUGHPUT_SECS as f64,
        all.load(Ordering::Relaxed),
    ))
}

/// Gbit/s that arrived at the drain server while one connection through
/// `port` sent as fast as it could (1 s warm-up, then THROUGHPUT_SECS
/// counted at the receiving end, so data still in buffers is not counted).
fn upload(port: u16) -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    let buf = vec![0xa5u8; 256 * 1024];
    let start = Instant::now();
    let (count_from, deadline) = (
        start + Duration::from_secs(1),
        start + Duration::from_secs(1 + THROUGHPUT_SECS),
    );
    let mut counted_from = None;
    while Instant::now() < deadline {
        s.write_all(&buf)?;
        if counted_from.is_none() && Instant::now() >= count_from {
            counted_from = Some((Instant::now(), DRAINED.load(Ordering::Relaxed)));
        }
    }
    let (t0, b0) = counted_from.context("the upload never reached its counted window")?;
    let (t1, b1) = (Instant::now(), DRAINED.load(Ordering::Relaxed));
    Ok((b1 - b0) as f64 * 8.0 / 1e9 / (t1 - t0).as_secs_f64())
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.50), at(0.99))
}

fn new_connection_latency(port: u16) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::new();
    for _ in 0..NEW_CONN_SAMPLES {
        let t = Instant::now();
        echo_once(port)?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(percentiles(samples))
}

fn round_trip_latency(port: u16) -> anyhow::Result<(f64, f64)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    let mut back = [0u8; 64];
    let mut samples = Vec::new();
    for _ in 0..RTT_SAMPLES {
        let t = Instant::now();
        s.write_all(&[7u8; 64])?;
        s.read_exact(&mut back)?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(percentiles(samples))
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after "(comm) ": state is the first, utime the 12th.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// /proc reports process times in USER_HZ, which Linux fixes at 100 for
/// user space whatever the kernel's own tick rate.
fn ticks_per_second() -> f64 {
    100.0
}

fn rss_mib(pid: u32) -> f64 {
    procfs::status_kib(pid, "VmRSS") as f64 / 1024.0
}
