//! Cutting text that comes from outside (agent reports, a server's
//! disconnect message, `docker inspect` and `/proc` fields) to a bound, so
//! that no input grows memory, a log line or an object without end, and so
//! that a reader can tell a cut string from a whole one.

/// What a cut string ends with, followed by the original length:
/// `"… [truncated from 5000 bytes]"`.
pub const TRUNCATED: &str = "… [truncated from";

/// `s` unchanged when it fits in `max` bytes; otherwise cut (on a character
/// boundary, so UTF-8 stays whole) and ending in a visible marker with its
/// original length in bytes, `max` bytes in all, or the marker alone (about
/// 30 bytes, never cut itself) when `max` is shorter than that.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let marker = format!("{TRUNCATED} {} bytes]", s.len());
    let mut end = max.saturating_sub(marker.len());
    // Terminates: index 0 is always a boundary.
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_visible_bounded_and_keeps_utf8_whole() {
        let long = "é".repeat(1024 * 1024);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with(&format!("{TRUNCATED} {} bytes]", long.len())));
        assert!(cut.starts_with("éé"));
        assert_eq!(truncate("short", 1024), "short");
    }

    #[test]
    fn a_string_of_exactly_the_bound_is_whole() {
        let s = "x".repeat(64);
        assert_eq!(truncate(&s, 64), s);
        assert!(truncate(&"x".repeat(65), 64).contains(TRUNCATED));
    }

    #[test]
    fn a_bound_below_the_marker_leaves_the_marker_alone() {
        assert_eq!(truncate("abcdefgh", 4), format!("{TRUNCATED} 8 bytes]"));
    }
}
