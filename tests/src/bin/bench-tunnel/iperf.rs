//! iperf3 (Debian's) as a second load tool: `iperf3 -s` on loopback behind
//! sshd, `iperf3 -c ... -R` through each tunnel, so the server sends and the
//! tunnel delivers to the client (the direction the agent's data path
//! serves, as the built-in download does).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Guard;

/// Seconds per run; the first one-second interval is warm-up (window
/// growth) and left out of the throughput, not out of CPU per byte.
const SECS: u64 = 5;

pub struct Server {
    pub proc: Guard,
    pub port: u16,
}

impl Server {
    pub fn start() -> anyhow::Result<Server> {
        let port = portplane_e2e::free_port()?;
        let child = Command::new("iperf3")
            .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (scripts/deps iperf3 installs it)")?;
        let server = Server {
            proc: Guard(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("iperf3 -s never listened on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// One `iperf3 -c 127.0.0.1 -p <port> -R -P <streams>` run: Gbit/s after
/// the first second, and every byte received (for CPU per byte).
pub fn download(port: u16, streams: usize) -> anyhow::Result<(f64, u64)> {
    // The server serves one test at a time and needs a moment to be ready
    // again after the last one: retry "busy" within a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-R", "-J"])
            .args(["-P", &streams.to_string(), "-t", &SECS.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running iperf3 -c")?;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("iperf3 -J printed no JSON ({})", output.status))?;
        if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
            if error.contains("busy") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            bail!("iperf3 -c through 127.0.0.1:{port}: {error}");
        }
        return parse(&report);
    }
}

fn parse(report: &serde_json::Value) -> anyhow::Result<(f64, u64)> {
    let intervals = report["intervals"]
        .as_array()
        .context("iperf3 report without intervals")?;
    let (mut bytes, mut secs) = (0.0, 0.0);
    for interval in intervals.iter().skip(1) {
        bytes += interval["sum"]["bytes"].as_f64().unwrap_or(0.0);
        secs += interval["sum"]["seconds"].as_f64().unwrap_or(0.0);
    }
    let total = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .context("iperf3 report without end.sum_received.bytes")?;
    if secs <= 0.0 || total == 0 {
        bail!("iperf3 moved nothing");
    }
    Ok((bytes * 8.0 / 1e9 / secs, total))
}
