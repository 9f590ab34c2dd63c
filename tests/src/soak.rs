//! Churn soak for a tunnel (the agent, or anything that forwards loopback
//! ports through sshd): many short connections, clients that stop reading
//! and must be cut, servers that close early, clients that reset; then what
//! was left behind: channels sshd still holds to the targets, the tunnel
//! process's RSS against idle, and whether a slow download still completes.
//! Shared by the `tunnel_churn` test and `bench-tunnel`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procfs;

/// Bytes an early-closing server sends before it closes.
pub const EARLY_BYTES: usize = 100 * 1024;
/// Bytes each echo connection sends and expects back.
const ECHO_BYTES: usize = 16 * 1024;
/// Bytes a resetting client reads before it closes with data unread.
const RESET_AFTER: usize = 64 * 1024;

/// Loopback servers behind sshd, one per kind of connection, so that
/// connections sshd still holds can be counted per kind.
pub struct Targets {
    /// Sends without end to clients that never read.
    pub stall: Target,
    /// Sends without end to clients that reset after a little.
    pub reset: Target,
    /// Sends [`EARLY_BYTES`], then closes.
    pub early: Target,
    pub echo: Target,
    /// Sends `bulk_bytes`, then closes (the final slow download).
    pub bulk: Target,
}

/// A loopback server and how many connections it has accepted.
pub struct Target {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Target {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Connections sshd still holds open to this server.
    pub fn open_at_sshd(&self) -> usize {
        procfs::tcp_connections_to(self.port)
    }
}

impl Targets {
    pub fn start(bulk_bytes: u64) -> anyhow::Result<Targets> {
        Ok(Targets {
            stall: serve(|s| send(s, None))?,
            reset: serve(|s| send(s, None))?,
            early: serve(|s| send(s, Some(EARLY_BYTES as u64)))?,
            echo: serve(echo)?,
            bulk: serve(move |s| send(s, Some(bulk_bytes)))?,
        })
    }

    fn all(&self) -> [&Target; 5] {
        [
            &self.stall,
            &self.reset,
            &self.early,
            &self.echo,
            &self.bulk,
        ]
    }

    /// Connections sshd still holds open to any of the targets.
    pub fn open_at_sshd(&self) -> usize {
        self.all().iter().map(|t| t.open_at_sshd()).sum()
    }
}

/// The tunnel's listen ports, one per target.
#[derive(Clone, Copy)]
pub struct Listen {
    pub stall: u16,
    pub reset: u16,
    pub early: u16,
    pub echo: u16,
    pub bulk: u16,
}

/// How much churn.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// All connections, the stalled ones included.
    pub connections: usize,
    pub stalled: usize,
    pub resets: usize,
    pub early_closes: usize,
    /// Client threads for the connections that are not stalled.
    pub workers: usize,
    /// Longest wait for the tunnel to cut every stalled client.
    pub cut_deadline: Duration,
    /// The final download: bytes and read pace (`chunk` per `pause`).
    pub download_bytes: u64,
    pub download_chunk: usize,
    pub download_pause: Duration,
}

impl Plan {
    /// The soak: 1,000 connections, 100 of them stalled, 100 resets,
    /// 200 early closes, then a 50 MiB download read at ~12 MB/s.
    pub fn standard() -> Plan {
        Plan {
            connections: 1000,
            stalled: 100,
            resets: 100,
            early_closes: 200,
            workers: 16,
            cut_deadline: Duration::from_secs(75),
            download_bytes: 50 * 1024 * 1024,
            download_chunk: 64 * 1024,
            download_pause: Duration::from_millis(5),
        }
    }
}

/// What the soak measured.
#[derive(Debug, Default)]
pub struct Figures {
    pub connections: usize,
    /// Stalled clients whose connection sshd still held when the cut
    /// deadline passed (0: the tunnel cut them all and closed the channels).
    pub stalled_not_closed: usize,
    /// Seconds from the first stalled client until sshd held none of them.
    pub stalled_closed_secs: f64,
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
    /// Lowest RSS seen within 10 s after the churn ended.
    pub rss_after_kib: u64,
    /// Connections sshd still held to the targets after the churn (waited
    /// for up to 10 s).
    pub channels_left: usize,
    /// Failed non-stalled connections: "kind #n: what went wrong".
    pub failures: Vec<String>,
    pub download_got: u64,
    pub download_secs: f64,
    pub download_error: Option<String>,
    pub churn_secs: f64,
}

impl Figures {
    /// One Markdown table row: connections | stalled left open | RSS idle /
    /// peak / after MiB | channels left | download.
    pub fn markdown_row(&self, label: &str) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        let download = match &self.download_error {
            None => format!(
                "{:.0} MiB in {:.1} s",
                self.download_got as f64 / 1048576.0,
                self.download_secs
            ),
            Some(e) => format!("failed after {} bytes: {e}", self.download_got),
        };
        format!(
            "| {label} | {} ({} failed) | {} | {:.1} / {:.1} / {:.1} | {} | {download} | {:.1} s |",
            self.connections,
            self.failures.len(),
            self.stalled_not_closed,
            mib(self.rss_idle_kib),
            mib(self.rss_peak_kib),
            mib(self.rss_after_kib),
            self.channels_left,
            self.churn_secs,
        )
    }

    pub const MARKDOWN_HEADER: &str = "| | connections | stalled left open at sshd | RSS idle / peak / after MiB | channels left at sshd | slow download | churn time |\n|---|---|---|---|---|---|---|";
}

/// Run `plan` through the tunnel process `pid` listening on `listen`.
pub fn run(pid: u32, listen: Listen, targets: &Targets, plan: Plan) -> anyhow::Result<Figures> {
    let mut figures = Figures {
        connections: plan.connections,
        rss_idle_kib: procfs::status_kib(pid, "VmRSS"),
        ..Figures::default()
    };
    let started = Instant::now();
    let peak = RssPeak::start(pid);

    // Clients that connect and never read; the tunnel must cut them.
    let stalled: Vec<TcpStream> = (0..plan.stalled)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", listen.stall))
                .with_context(|| format!("stalled client #{i}: connect"))
        })
        .collect::<anyhow::Result<_>>()?;

    // Everything else, in parallel with them.
    let others = plan.connections - plan.stalled;
    let (jobs_tx, jobs_rx) = mpsc::channel::<(usize, Kind)>();
    for i in 0..others {
        let kind = if i < plan.resets {
            Kind::Reset
        } else if i < plan.resets + plan.early_closes {
            Kind::Early
        } else {
            Kind::Echo
        };
        jobs_tx.send((i, kind))?;
    }
    drop(jobs_tx);
    let jobs = Arc::new(std::sync::Mutex::new(jobs_rx));
    let workers: Vec<_> = (0..plan.workers.max(1))
        .map(|_| {
            let jobs = jobs.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                loop {
                    let job = jobs.lock().map(|rx| rx.recv());
                    let Ok(Ok((i, kind))) = job else { break };
                    if let Err(e) = kind.run(listen) {
                        failures.push(format!("{kind:?} #{i}: {e}"));
                    }
                }
                failures
            })
        })
        .collect();
    for w in workers {
        match w.join() {
            Ok(f) => figures.failures.extend(f),
            Err(_) => figures.failures.push("a client thread panicked".into()),
        }
    }

    // Every stalled client reached sshd, and sshd closed each channel.
    let deadline = started + plan.cut_deadline;
    while Instant::now() < deadline
        && (targets.stall.accepted() < plan.stalled || targets.stall.open_at_sshd() > 0)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    figures.stalled_not_closed =
        targets.stall.open_at_sshd() + plan.stalled.saturating_sub(targets.stall.accepted());
    figures.stalled_closed_secs = started.elapsed().as_secs_f64();
    drop(stalled);

    // What is left once everything has ended.
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle && targets.open_at_sshd() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    figures.channels_left = targets.open_at_sshd();
    figures.churn_secs = started.elapsed().as_secs_f64();
    figures.rss_peak_kib = peak.stop();
    figures.rss_after_kib = settled_rss(pid, figures.rss_idle_kib);

    // A slow download must still get every byte.
    let t = Instant::now();
    match download(listen.bulk, &plan) {
        Ok(got) => {
            figures.download_got = got;
            if got != plan.download_bytes {
                figures.download_error = Some(format!("EOF after {got} bytes"));
            }
        }
        Err((got, e)) => {
            figures.download_got = got;
            figures.download_error = Some(e.to_string());
        }
    }
    figures.download_secs = t.elapsed().as_secs_f64();
    Ok(figures)
}

/// The lowest RSS within 10 s, returning early once within 1 MiB of
/// `idle` (freed memory reaches the OS as the allocator trims).
fn settled_rss(pid: u32, idle: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut low = u64::MAX;
    while Instant::now() < deadline {
        low = low.min(procfs::status_kib(pid, "VmRSS"));
        if low <= idle + 1024 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    low
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Reset,
    Early,
    Echo,
}

impl Kind {
    fn run(self, listen: Listen) -> std::io::Result<()> {
        match self {
            Kind::Reset => {
                let mut s = TcpStream::connect(("127.0.0.1", listen.reset))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut buf = vec![0u8; RESET_AFTER];
                s.read_exact(&mut buf)?;
                // Closing with data still unread makes the kernel send RST.
                Ok(())
            }
            Kind::Early => {
                let mut s = TcpStream::connect(("127.0.0.1", listen.early))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut got = Vec::new();
                s.read_to_end(&mut got)?;
                if got.len() != EARLY_BYTES {
                    return Err(std::io::Error::other(format!(
                        "got {} of {EARLY_BYTES} bytes before EOF",
                        got.len()
                    )));
                }
                Ok(())
            }
            Kind::Echo => {
                let mut s = TcpStream::connect(("127.0.0.1", listen.echo))?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let msg = vec![0xc3u8; ECHO_BYTES];
                s.write_all(&msg)?;
                let mut back = vec![0u8; ECHO_BYTES];
                s.read_exact(&mut back)?;
                if back != msg {
                    return Err(std::io::Error::other("echo mismatch"));
                }
                Ok(())
            }
        }
    }
}

/// Bytes read before EOF or `plan.download_bytes`; on error, the bytes read
/// so far and the error.
fn download(port: u16, plan: &Plan) -> Result<u64, (u64, std::io::Error)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| (0, e))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| (0, e))?;
    let mut buf = vec![0u8; plan.download_chunk];
    let mut got = 0u64;
    while got < plan.download_bytes {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => return Err((got, e)),
        }
        std::thread::sleep(plan.download_pause);
    }
    Ok(got)
}

/// Samples a process's RSS every 100 ms until stopped; the peak in KiB.
struct RssPeak {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(procfs::status_kib(pid, "VmRSS"));
                if !matches!(
                    stopped.recv_timeout(Duration::from_millis(100)),
                    Err(mpsc::RecvTimeoutError::Timeout)
                ) {
                    return peak;
                }
            }
        });
        RssPeak { stop, thread }
    }

    fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(0)
    }
}

fn serve(handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> anyhow::Result<Target> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::Relaxed);
            let handle = handle.clone();
            std::thread::spawn(move || handle(stream));
        }
    });
    Ok(Target { port, accepted })
}

fn send(mut s: TcpStream, bytes: Option<u64>) {
    let buf = vec![0x5au8; 64 * 1024];
    let mut sent = 0u64;
    while bytes.is_none_or(|b| sent < b) {
        let n = bytes.map_or(buf.len() as u64, |b| (b - sent).min(buf.len() as u64));
        if s.write_all(&buf[..n as usize]).is_err() {
            return;
        }
        sent += n;
    }
}

fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
