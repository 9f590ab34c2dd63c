//! Who holds a TCP port: on Linux from /proc/net/tcp{,6} and /proc/*/fd, on
//! macOS from `lsof`. Best effort: `None` when it cannot be found (another
//! user's process, no lsof).

use std::path::Path;

/// A process listening on a TCP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Real uid, when it could be read.
    pub uid: Option<u32>,
    /// Command name (`comm` on Linux, lsof's `c` on macOS): `ssh`, `portplane-agent`.
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.command)
    }
}

/// "pid 1234 (ssh)" for the process listening on `port`, when found.
pub fn describe_holder(port: u16) -> Option<String> {
    holders(port).first().map(Holder::to_string)
}

/// Every process listening on `port` (any address), each once.
pub fn holders(port: u16) -> Vec<Holder> {
    let mut found = if Path::new("/proc/net/tcp").exists() {
        from_proc(port)
    } else {
        from_lsof(port)
    };
    found.sort_by_key(|h| h.pid);
    found.dedup_by_key(|h| h.pid);
    found
}

fn from_proc(port: u16) -> Vec<Holder> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    let mut found: Vec<Holder> = Vec::new();
    for (pid, _) in socket_holders(&inodes) {
        if found.iter().any(|h| h.pid == pid) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        found.push(Holder {
            pid,
            uid: proc_uid(pid),
            command: comm.trim().to_string(),
        });
    }
    found
}

/// Every (pid, socket inode) such that process `pid` holds one of `inodes`
/// open, read from `/proc/<pid>/fd` (Linux). Processes that vanish or that
/// we may not inspect are skipped.
pub fn socket_holders(inodes: &std::collections::HashSet<u64>) -> Vec<(u32, u64)> {
    let mut found = Vec::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                found.push((pid, inode));
            }
        }
    }
    found
}

/// The real uid from `/proc/<pid>/status` (`Uid:\treal\teffective...`).
fn proc_uid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Socket inodes in LISTEN state (`0A`) on `port`, from a /proc/net/tcp table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *state == "0A" && inode != 0).then_some(inode)
        })
        .collect()
}

fn from_lsof(port: u16) -> Vec<Holder> {
    let Ok(out) = std::process::Command::new("lsof")
        .args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-Fpcu"])
        .output()
    else {
        return Vec::new();
    };
    parse_lsof(&String::from_utf8_lossy(&out.stdout))
}

/// lsof `-F pcu` output: a `p<pid>` line starts each process, then `c<command>`
/// and `u<uid>`; `f...` lines (one per file) are skipped.
fn parse_lsof(text: &str) -> Vec<Holder> {
    let mut found: Vec<Holder> = Vec::new();
    for line in text.lines() {
        let mut chars = line.chars();
        let tag = chars.next();
        let value = chars.as_str();
        match tag {
            Some('p') => {
                if let Ok(pid) = value.parse() {
                    found.push(Holder {
                        pid,
                        uid: None,
                        command: "?".into(),
                    });
                }
            }
            Some('c') => {
                if let Some(h) = found.last_mut() {
                    h.command = value.to_string();
                }
            }
            Some('u') => {
                if let Some(h) = found.last_mut() {
                    h.uid = value.parse().ok();
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:403B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:403B 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_only_the_listener_on_the_port() {
        assert_eq!(listening_inodes(TABLE, 16443), vec![31337]);
        assert_eq!(listening_inodes(TABLE, 15000), vec![777]);
        assert!(listening_inodes(TABLE, 22).is_empty());
    }

    #[test]
    fn parses_lsof_fields() {
        let found = parse_lsof("p812\ncssh\nu501\nf5\nf6\np900\ncportplane-agent\nu0\nf3\n");
        assert_eq!(
            found,
            vec![
                Holder {
                    pid: 812,
                    uid: Some(501),
                    command: "ssh".into()
                },
                Holder {
                    pid: 900,
                    uid: Some(0),
                    command: "portplane-agent".into()
                },
            ]
        );
    }

    #[test]
    fn finds_this_process_holding_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = holders(port);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].uid, Some(nix_uid()));
        let holder = describe_holder(port).unwrap();
        assert!(
            holder.starts_with(&format!("pid {} ", std::process::id())),
            "{holder}"
        );
    }

    fn nix_uid() -> u32 {
        nix::unistd::getuid().as_raw()
    }
}
