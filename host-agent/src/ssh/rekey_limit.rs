//! `RekeyLimit` from the OpenSSH client config: how much data, and how much
//! time, one set of session keys may serve before the client starts a new
//! key exchange (ssh_config(5)).

use std::time::Duration;

/// `RekeyLimit data [time]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeyLimit {
    /// Bytes sent, or received, under one set of keys; `None` (`default`)
    /// leaves it to the SSH library (russh: 1 GiB, the most it allows).
    pub data: Option<u64>,
    /// `None` (`none`, `default`, or no second argument) leaves it to the
    /// SSH library (russh: 1 hour; OpenSSH has no time limit by default).
    pub time: Option<Duration>,
}

impl RekeyLimit {
    /// Parse the arguments after the keyword. `data` is an integer with an
    /// optional `K`, `M` or `G` suffix (powers of 1024), at least 16, or
    /// `default` (as is 0); `time` is OpenSSH's time format (`90`, `30m`,
    /// `1h30m`; suffixes s, m, h, d, w), `none` or `default` (as is 0).
    /// Decimal amounts (`1.5G`), which OpenSSH also takes, are refused.
    /// Errors say what was expected.
    pub fn parse(args: &[String]) -> Result<RekeyLimit, String> {
        let (data, time) = match args {
            [data] => (data, None),
            [data, time] => (data, Some(time)),
            _ => return Err(format!("expected `data [time]`, got {} values", args.len())),
        };
        let data = if data.eq_ignore_ascii_case("default") {
            None
        } else {
            let bytes = parse_size(data).ok_or_else(|| {
                format!("expected an amount of data such as 512M, 1G or default, got {data:?}")
            })?;
            // OpenSSH refuses these too ("RekeyLimit too small"); 0 is its
            // spelling of the default.
            if bytes != 0 && bytes < 16 {
                return Err(format!("expected at least 16 bytes, got {data:?}"));
            }
            (bytes != 0).then_some(bytes)
        };
        let time = match time {
            None => None,
            Some(t) if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("default") => None,
            Some(t) => parse_time(t)
                .ok_or_else(|| format!("expected a time such as 30m, 1h or none, got {t:?}"))?,
        };
        Ok(RekeyLimit { data, time })
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (digits, scale) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// OpenSSH's `convtime`: digits each followed by an optional unit, summed;
/// `Some(None)` for 0 (no time limit), `None` when malformed.
fn parse_time(s: &str) -> Option<Option<Duration>> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(digits.parse::<u64>().ok()?.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.checked_add(digits.parse().ok()?)?;
    }
    if s.is_empty() {
        return None;
    }
    Some((total > 0).then(|| Duration::from_secs(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RekeyLimit, String> {
        RekeyLimit::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn data_with_suffixes_and_an_optional_time() {
        assert_eq!(
            parse(&["512M"]),
            Ok(RekeyLimit {
                data: Some(512 << 20),
                time: None
            })
        );
        assert_eq!(
            parse(&["1G", "1h30m"]),
            Ok(RekeyLimit {
                data: Some(1 << 30),
                time: Some(Duration::from_secs(5400))
            })
        );
        assert_eq!(
            parse(&["default", "90"]),
            Ok(RekeyLimit {
                data: None,
                time: Some(Duration::from_secs(90))
            })
        );
        assert_eq!(
            parse(&["4k", "none"]),
            Ok(RekeyLimit {
                data: Some(4096),
                time: None
            })
        );
        // OpenSSH's zeros: the default amount, no time limit.
        assert_eq!(parse(&["0", "0"]), Ok(RekeyLimit::default()));
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        assert!(
            parse(&["lots"])
                .unwrap_err()
                .contains("512M, 1G or default")
        );
        assert!(parse(&["8"]).unwrap_err().contains("at least 16 bytes"));
        assert!(
            parse(&["1G", "soon"])
                .unwrap_err()
                .contains("30m, 1h or none")
        );
        assert!(parse(&[]).unwrap_err().contains("data [time]"));
        assert!(parse(&["1G", "1h", "x"]).unwrap_err().contains("3 values"));
        assert!(parse(&["99999999999999G"]).is_err(), "overflow is an error");
        assert!(parse(&["1G", ""]).is_err(), "an empty time is an error");
        assert!(parse(&["1.5G"]).is_err(), "decimal amounts are refused");
    }
}
