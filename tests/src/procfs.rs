//! What the benchmarks read about a process from /proc (Linux).

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB;
/// 0 when the process or the line is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process (all its threads) in milliseconds; 0 when
/// it is gone.
pub fn cpu_ms(pid: u32) -> u64 {
    stat_cpu_ms(&format!("/proc/{pid}/stat"))
}

/// utime + stime in milliseconds from a `stat` file of /proc: a process's,
/// or a thread's (`/proc/thread-self/stat`); 0 when it cannot be read.
/// /proc counts in USER_HZ, which Linux fixes at 100 for user space
/// whatever the kernel's own tick rate.
pub fn stat_cpu_ms(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|stat| {
            // Fields after "(comm) ": state is the first, utime the 12th.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .map_or(0, |ticks| ticks * 10)
}

/// `voluntary_ctxt_switches` of a `status` file of /proc (a thread's, or a
/// process's own thread): how often it blocked waiting; 0 when it cannot
/// be read.
pub fn voluntary_switches(status_path: &std::path::Path) -> u64 {
    std::fs::read_to_string(status_path)
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// TCP sockets in this network namespace still connected to
/// 127.0.0.1:`port` (ESTABLISHED, or CLOSE_WAIT: the peer closed but this
/// side has not), read from `/proc/net/tcp`. For a target only sshd dials,
/// this is the number of forwarded channels sshd still holds open to it.
pub fn tcp_connections_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    // "0100007F:1F90": the address in network order printed as a host-order
    // u32 (little-endian here), the port in plain hex.
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && matches!(fields.get(3), Some(&"01" | &"08"))
        })
        .count()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_and_nothing_for_an_unknown_field() {
        let me = std::process::id();
        assert!(super::status_kib(me, "VmRSS") > 0);
        assert!(super::status_kib(me, "VmHWM") >= super::status_kib(me, "VmRSS"));
        assert_eq!(super::status_kib(me, "VmNope"), 0);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        let me = std::process::id();
        let before = super::cpu_ms(me);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(super::cpu_ms(me) >= before + 100, "200 ms of spinning");
        assert_eq!(super::cpu_ms(u32::MAX), 0);
    }

    #[test]
    fn counts_open_connections_to_a_port_and_not_closed_ones() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(super::tcp_connections_to(port), 0);
        let a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(super::tcp_connections_to(port), 2);
        drop(a);
        assert_eq!(super::tcp_connections_to(port), 1);
        drop(b);
    }
}
