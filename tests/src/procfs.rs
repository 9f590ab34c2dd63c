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

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process_and_nothing_for_an_unknown_field() {
        let me = std::process::id();
        assert!(super::status_kib(me, "VmRSS") > 0);
        assert!(super::status_kib(me, "VmHWM") >= super::status_kib(me, "VmRSS"));
        assert_eq!(super::status_kib(me, "VmNope"), 0);
    }
}
