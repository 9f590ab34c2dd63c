//! The bench's own load tool: loopback servers behind sshd (echo, a source
//! that writes as fast as it can, a drain), download readers and an upload
//! writer, each on threads of its own named after its part (`reader`,
//! `source`, ...: a system-wide profile tells them apart), and what the
//! readers and sources cost, counted as each thread ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use portplane_e2e::procfs;

use crate::{Guard, THROUGHPUT_SECS};

/// Bytes the drain server has received, all connections together.
static DRAINED: AtomicU64 = AtomicU64::new(0);
/// Reads of the download readers, all tunnels: how many pieces the tunnel
/// client's writes reached them in.
static READS: AtomicU64 = AtomicU64::new(0);
/// The readers' voluntary context switches (reads that found no data and
/// slept).
static READER_SLEEPS: AtomicU64 = AtomicU64::new(0);
/// CPU time (ms) of the readers and of the sources feeding them.
static READER_MS: AtomicU64 = AtomicU64::new(0);
static SOURCE_MS: AtomicU64 = AtomicU64::new(0);
/// Source threads still writing.
static SOURCES: AtomicU64 = AtomicU64::new(0);

/// The download readers' counters, all tunnels so far ([`ReaderCounts::now`])
/// or per GB delivered between two of those ([`ReaderCounts::per_gb`]).
#[derive(Clone, Copy, Default)]
pub struct ReaderCounts {
    pub reads: f64,
    pub sleeps: f64,
    /// CPU of the readers and of their sources, in ms.
    pub reader_ms: f64,
    pub source_ms: f64,
}

impl ReaderCounts {
    /// Waits (up to 5 s) for every source to have ended, as each does once
    /// its reader has gone, so that the count holds all their CPU time.
    pub fn now() -> ReaderCounts {
        let deadline = Instant::now() + Duration::from_secs(5);
        while SOURCES.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        ReaderCounts {
            reads: get(&READS),
            sleeps: get(&READER_SLEEPS),
            reader_ms: get(&READER_MS),
            source_ms: get(&SOURCE_MS),
        }
    }

    /// What each counter grew by from `before` to `self`, per GB (10^9
    /// bytes) of `bytes` delivered meanwhile.
    pub fn per_gb(self, before: ReaderCounts, bytes: u64) -> ReaderCounts {
        let gb = bytes as f64 / 1e9;
        ReaderCounts {
            reads: (self.reads - before.reads) / gb,
            sleeps: (self.sleeps - before.sleeps) / gb,
            reader_ms: (self.reader_ms - before.reader_ms) / gb,
            source_ms: (self.source_ms - before.source_ms) / gb,
        }
    }
}

/// A loopback server running `handle` on a thread per connection, each
/// named `name`; returns its port.
pub fn serve(name: &'static str, handle: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || handle(stream));
            if let Err(e) = spawned {
                eprintln!("{name}: no thread for a connection: {e}");
            }
        }
    });
    port
}

pub fn echo_conn(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 16384];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Writes 256 KiB blocks until the connection ends.
pub fn source_conn(mut s: TcpStream) {
    SOURCES.fetch_add(1, Ordering::AcqRel);
    let buf = vec![0x5au8; 256 * 1024];
    while s.write_all(&buf).is_ok() {}
    SOURCE_MS.fetch_add(thread_cpu_ms(), Ordering::Relaxed);
    SOURCES.fetch_sub(1, Ordering::AcqRel);
}

pub fn drain_conn(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        DRAINED.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Gbit/s received over `streams` parallel connections for THROUGHPUT_SECS,
/// and every byte moved (warm-up included, for CPU per byte).
pub fn throughput(port: u16, streams: usize) -> anyhow::Result<(f64, u64)> {
    let total = Arc::new(AtomicU64::new(0));
    let all = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECS + 1);
    let threads: Vec<std::thread::JoinHandle<std::io::Result<()>>> = (0..streams)
        .map(|_| {
            let (total, all) = (total.clone(), all.clone());
            std::thread::Builder::new()
                .name("reader".into())
                .spawn(move || read_until(port, deadline, &total, &all))
        })
        .collect::<std::io::Result<_>>()?;
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    Ok((
        total.load(Ordering::Relaxed) as f64 * 8.0 / 1e9 / THROUGHPUT_SECS as f64,
        all.load(Ordering::Relaxed),
    ))
}

/// One download reader: 256 KiB reads of `port` until `deadline`, adding
/// to `all` every byte and to `total` those after one second of warm-up
/// (window growth); counts its reads, sleeps and CPU.
fn read_until(
    port: u16,
    deadline: Instant,
    total: &AtomicU64,
    all: &AtomicU64,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    let mut buf = vec![0u8; 256 * 1024];
    let count_from = Instant::now() + Duration::from_secs(1);
    let slept = thread_sleeps();
    while Instant::now() < deadline {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        all.fetch_add(n as u64, Ordering::Relaxed);
        READS.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= count_from {
            total.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    READER_SLEEPS.fetch_add(thread_sleeps().saturating_sub(slept), Ordering::Relaxed);
    READER_MS.fetch_add(thread_cpu_ms(), Ordering::Relaxed);
    Ok(())
}

/// CPU time of the calling thread so far, in ms.
fn thread_cpu_ms() -> u64 {
    procfs::stat_cpu_ms("/proc/thread-self/stat")
}

/// Voluntary context switches of the calling thread so far.
fn thread_sleeps() -> u64 {
    procfs::voluntary_switches(std::path::Path::new("/proc/thread-self/status"))
}

/// Gbit/s that arrived at the drain server while one connection through
/// `port` sent as fast as it could (1 s warm-up, then THROUGHPUT_SECS
/// counted at the receiving end, so data still in buffers is not counted).
pub fn upload(port: u16) -> anyhow::Result<f64> {
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

/// `BENCH_BUSY_CPUS=1`, a diagnostic: one busy loop per CPU at
/// `SCHED_IDLE` priority (`chrt -i 0`), which runs only when nothing else
/// wants the CPU, so that no CPU goes idle. On a VM a thread woken on an
/// idle virtual CPU costs more than on a busy one, and how often a CPU
/// idles follows how often the tunnel client sleeps: comparing a run with
/// and without tells that cost from the tunnel's own (BENCHMARKS.md,
/// issue 12, twelfth run). Not a fairer default: the loops still delay
/// every wake-up a little, which costs the client that sleeps more often
/// throughput. The loops are processes of their own, charged to no party,
/// killed when the guards drop.
pub fn busy_cpus() -> anyhow::Result<Vec<Guard>> {
    if std::env::var_os("BENCH_BUSY_CPUS").is_none_or(|v| v == "0") {
        return Ok(Vec::new());
    }
    let cpus = std::thread::available_parallelism()?.get();
    eprintln!("BENCH_BUSY_CPUS: {cpus} SCHED_IDLE busy loops");
    (0..cpus)
        .map(|_| {
            Command::new("chrt")
                .args(["-i", "0", "sh", "-c", "while :; do :; done"])
                .spawn()
                .map(Guard)
                .context("chrt (util-linux) for BENCH_BUSY_CPUS")
        })
        .collect()
}
