//! Who holds a TCP port: on Linux from /proc/net/tcp{,6} and /proc/*/fd, on
//! macOS from `lsof`. Best effort: `None` when it cannot be found (another
//! user's process, no lsof).

use std::path::Path;

/// "pid 1234 (ssh)" for the process listening on `port`, when found.
pub fn describe_holder(port: u16) -> Option<String> {
    if Path::new("/proc/net/tcp").exists() {
        from_proc(port)
    } else {
        from_lsof(port)
    }
}

fn from_proc(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
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
            let link = link.to_string_lossy();
            if inodes.iter().any(|i| link == format!("socket:[{i}]")) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    None
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

fn from_lsof(port: u16) -> Option<String> {
    let out = std::process::Command::new("lsof")
        .args(["-nP", &format!("-iTCP:{port}"), "-sTCP:LISTEN", "-Fpc"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.lines().find_map(|l| l.strip_prefix('p'))?;
    let comm = text
        .lines()
        .find_map(|l| l.strip_prefix('c'))
        .unwrap_or("?");
    Some(format!("pid {pid} ({comm})"))
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
    fn finds_this_process_holding_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = describe_holder(port).unwrap();
        assert!(
            holder.starts_with(&format!("pid {} ", std::process::id())),
            "{holder}"
        );
    }
}
