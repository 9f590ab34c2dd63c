//! What a transfer cost: CPU time of the tunnel client, of sshd (with its
//! per-session children) and of the load tool, read from /proc around it,
//! and the tunnel client's write syscalls (`perf stat` on the syscall
//! tracepoints: tokio writes sockets with send(2), which /proc/PID/io's
//! `syscw` does not count) and how often it went to sleep waiting (its
//! threads' voluntary context switches), each divided by the bytes
//! delivered.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use portplane_e2e::procfs;
use portplane_e2e::sshd::descendants;

use crate::Guard;

/// The processes one transfer is charged to.
#[derive(Clone, Copy)]
pub struct Parties {
    /// The tunnel client: portplane-agent or ssh.
    pub client: u32,
    pub sshd: u32,
    /// A load tool running as a server of its own (iperf3 -s), if any; the
    /// bench process itself (and the children it waited for, such as the
    /// iperf3 client) always counts as load tool.
    pub server: Option<u32>,
}

/// Counters at one instant (CPU in clock ticks).
#[derive(Clone, Copy)]
pub struct Snapshot {
    client: u64,
    client_sleeps: u64,
    sshd: u64,
    tool: u64,
}

impl Snapshot {
    pub fn take(p: Parties) -> Snapshot {
        let me = std::process::id();
        Snapshot {
            client: cpu_ticks(p.client, false),
            client_sleeps: voluntary_switches(p.client),
            sshd: descendants(p.sshd)
                .into_iter()
                .map(|pid| cpu_ticks(pid, false))
                .sum(),
            tool: cpu_ticks(me, true) + p.server.map_or(0, |pid| cpu_ticks(pid, false)),
        }
    }
}

/// One transfer: throughput and what each party spent per byte delivered.
#[derive(Clone, Copy, Default)]
pub struct Transfer {
    pub gbit: f64,
    /// CPU milliseconds per GB (10^9 bytes) delivered.
    pub client_ms_gb: f64,
    pub sshd_ms_gb: f64,
    pub tool_ms_gb: f64,
    /// write, writev, sendto and sendmsg syscalls of the tunnel client per
    /// MB (10^6 bytes) delivered: to clients and to the SSH socket alike (on
    /// a download almost all go to clients). NaN when perf cannot count.
    pub writes_per_mb: f64,
    /// Times the tunnel client blocked waiting (voluntary context switches,
    /// all threads) per GB delivered. Each is a wake-up the sender pays
    /// for: here sshd, whose socket delivers the data.
    pub client_sleeps_gb: f64,
}

impl Transfer {
    /// `bytes`: everything delivered between the two snapshots; `writes`:
    /// the client's write syscalls meanwhile, if counted.
    pub fn between(
        before: Snapshot,
        after: Snapshot,
        gbit: f64,
        bytes: u64,
        writes: Option<u64>,
    ) -> Transfer {
        let gb = bytes as f64 / 1e9;
        let ms = |a: u64, b: u64| a.saturating_sub(b) as f64 * 1000.0 / USER_HZ / gb;
        Transfer {
            gbit,
            client_ms_gb: ms(after.client, before.client),
            sshd_ms_gb: ms(after.sshd, before.sshd),
            tool_ms_gb: ms(after.tool, before.tool),
            writes_per_mb: writes.map_or(f64::NAN, |w| w as f64 / (bytes as f64 / 1e6)),
            client_sleeps_gb: after.client_sleeps.saturating_sub(before.client_sleeps) as f64 / gb,
        }
    }

    pub fn path_ms_gb(&self) -> f64 {
        self.client_ms_gb + self.sshd_ms_gb + self.tool_ms_gb
    }

    /// Field by field median of several rounds.
    pub fn median(rounds: &[Transfer]) -> Transfer {
        let m = |f: fn(&Transfer) -> f64| crate::median(rounds.iter().map(f));
        Transfer {
            gbit: m(|t| t.gbit),
            client_ms_gb: m(|t| t.client_ms_gb),
            sshd_ms_gb: m(|t| t.sshd_ms_gb),
            tool_ms_gb: m(|t| t.tool_ms_gb),
            writes_per_mb: m(|t| t.writes_per_mb),
            client_sleeps_gb: m(|t| t.client_sleeps_gb),
        }
    }
}

/// /proc reports process times in USER_HZ, which Linux fixes at 100 for
/// user space whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// utime + stime of a process (all its threads), in clock ticks; with
/// `children`, plus the times of the children it has waited for.
pub fn cpu_ticks(pid: u32, children: bool) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after "(comm) ": state is the first, utime the 12th,
            // stime, cutime, cstime follow.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
            let own = field(11)? + field(12)?;
            Some(if children {
                own + field(13)? + field(14)?
            } else {
                own
            })
        })
        .unwrap_or(0)
}

/// Voluntary context switches of every thread of `pid` (0 if it is gone).
/// Threads that ended meanwhile drop out of the sum; the tunnel clients
/// here keep theirs for the whole run.
fn voluntary_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|task| procfs::voluntary_switches(&task.path().join("status")))
        .sum()
}

/// The syscalls that write to a socket, as perf tracepoints.
const WRITE_SYSCALLS: &str = "syscalls:sys_enter_write,syscalls:sys_enter_writev,\
                              syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg";

/// `perf stat` attached to one process (all its threads at the time),
/// counting only between `enable` and `finish`: it starts disabled and
/// acknowledges each command on a FIFO, so the count covers the transfer
/// exactly.
pub struct WriteCounter {
    perf: Guard,
    ctl: File,
    ack: File,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl WriteCounter {
    /// None when perf is missing or cannot attach (the figure is then n/a).
    pub fn start(pid: u32) -> Option<WriteCounter> {
        let dir = tempfile::tempdir().ok()?;
        let (ctl, ack, out) = (
            dir.path().join("ctl"),
            dir.path().join("ack"),
            dir.path().join("out"),
        );
        let made = Command::new("mkfifo").arg(&ctl).arg(&ack).status().ok()?;
        if !made.success() {
            return None;
        }
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-D", "-1", "-e", WRITE_SYSCALLS])
            .arg("--control")
            .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // Opened read-write, a FIFO never blocks on open.
        let fifo = |path: &PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .ok()
        };
        let mut counter = WriteCounter {
            perf: Guard(perf),
            ctl: fifo(&ctl)?,
            ack: fifo(&ack)?,
            out,
            _dir: dir,
        };
        counter.command("enable").then_some(counter)
    }

    /// Send a control command and wait (up to 10 s) for perf's "ack".
    fn command(&mut self, command: &str) -> bool {
        if writeln!(self.ctl, "{command}").is_err() {
            return false;
        }
        let Ok(mut ack) = self.ack.try_clone() else {
            return false;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // perf writes the C string "ack\n" with its NUL.
            let mut buf = [0u8; 5];
            let _ = tx.send(ack.read_exact(&mut buf).is_ok() && buf.starts_with(b"ack\n"));
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or(false)
    }

    /// Stop counting; the number of write syscalls since `start`.
    pub fn finish(mut self) -> Option<u64> {
        if !self.command("disable") {
            return None;
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.perf.0.id()).ok()?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).ok()?;
        self.perf.0.wait().ok()?;
        let report = std::fs::read_to_string(&self.out).ok()?;
        // CSV: "count,unit,event,...", "<not counted>" for an event that
        // never ran.
        let counts: Vec<u64> = report
            .lines()
            .filter(|l| l.contains("syscalls:sys_enter_"))
            .map(|l| {
                l.split(',')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        (!counts.is_empty()).then(|| counts.iter().sum())
    }
}
