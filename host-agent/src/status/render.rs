//! `status` as text for a terminal.

use std::fmt::Write as _;

use super::{AgentStatus, StatusReport};
use crate::service::manager::ServiceView;

/// "3h 2m", "45s".
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

pub fn agent(a: &AgentStatus) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "portplane-agent {}: pid {}, up {} (since {}), config {}",
        a.version,
        a.pid,
        duration(a.uptime_seconds),
        a.started_at,
        a.config
    );
    let _ = writeln!(
        t,
        "ssh: {}: {}/{} sessions up{}{}",
        if a.ssh.host.is_empty() {
            "(not resolved yet)"
        } else {
            &a.ssh.host
        },
        a.ssh.sessions_up,
        a.ssh.sessions,
        a.ssh
            .up_since
            .as_ref()
            .map(|s| format!(" since {s}"))
            .unwrap_or_default(),
        a.ssh
            .last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    );
    let rows: Vec<[String; 9]> = a
        .forwards
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                f.listen.clone(),
                f.target.clone(),
                f.state.clone(),
                f.active_connections.to_string(),
                f.total_connections.to_string(),
                bytes(f.bytes_from_clients),
                bytes(f.bytes_to_clients),
                f.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "FORWARD",
        "LISTEN",
        "TARGET",
        "STATE",
        "ACTIVE",
        "TOTAL",
        "SENT",
        "RECEIVED",
        "LAST ERROR",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(t, "{}", line.trim_end());
    }
    match &a.controller {
        None => {
            let _ = writeln!(t, "controller: not configured");
        }
        Some(c) => {
            let _ = writeln!(
                t,
                "controller: {}: {}; last report {}; inventory revision {}{}",
                c.endpoint,
                if c.connected {
                    "connected"
                } else {
                    "not connected"
                },
                c.last_report.as_deref().unwrap_or("never"),
                c.inventory_revision
                    .map_or_else(|| "none cached".into(), |r| r.to_string()),
                c.last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    t
}

pub fn service(v: &ServiceView) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &v.error {
        parts.push(e.clone());
    } else {
        parts.push(
            if v.installed {
                "installed"
            } else {
                "not installed"
            }
            .to_string(),
        );
        if let Some(l) = v.loaded {
            parts.push(if l { "loaded" } else { "not loaded" }.into());
        }
        if let Some(s) = &v.state {
            parts.push(s.clone());
        }
        if let Some(p) = v.pid {
            parts.push(format!("pid {p}"));
        }
        if let Some(c) = v.last_exit {
            parts.push(format!("last exit {c}"));
        }
        if let Some(r) = v.restarts {
            parts.push(format!("restarts {r}"));
        }
    }
    format!("service: {} {}: {}\n", v.manager, v.name, parts.join(", "))
}

pub fn report(r: &StatusReport) -> String {
    let mut t = r.agent.as_ref().map(agent).unwrap_or_default();
    t.push_str(&service(&r.service));
    t
}

/// Bytes in binary units, as `ls -h` and kubectl show sizes ("1.5 MiB").
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(125), "2m 5s");
        assert_eq!(duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(duration(2 * 86400 + 3600), "2d 1h");
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1023), "1023 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(5 << 30), "5.0 GiB");
    }
}
