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
    /// Parse the arguments after the keyword. `data` is an amount as
    /// OpenSSH reads it (`512M`, `1.5G`, `4096`: see `parse_size`), at
    /// least 16 bytes, or `default` (as is 0); `time` is OpenSSH's time
    /// format (`90`, `30m`, `1h30m`; suffixes s, m, h, d, w), `none` or
    /// `default` (as is 0). Errors say what was expected.
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
                format!("expected an amount of data such as 512M, 1.5G or default, got {data:?}")
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

/// OpenSSH's `scan_scaled` (fmt_scaled.c), which readconf.c uses for
/// `RekeyLimit`: an optional `+`, digits with at most one `.`, then an
/// optional unit B, K, M, G, T, P or E (powers of 1024, either case). A
/// fraction counts only with a unit (`1.5G`, `.5K`), and is truncated to
/// whole bytes; without one it is dropped (`100.7` is 100), as OpenSSH
/// does. `None` when malformed or past `i64::MAX` (OpenSSH's `long long`:
/// `8E` is too large there too). Unlike OpenSSH, a unit or `.` without
/// digits is refused rather than read as 0 (the default).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let (number, scale) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let power = "BKMGTPE".find(c.to_ascii_uppercase())?;
            (&s[..i], 1u128 << (10 * power))
        }
        _ => (s, 1),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // OpenSSH keeps at most 19 digits of the fraction.
    let fraction = &fraction[..fraction.len().min(19)];
    let bytes = if scale == 1 || fraction.is_empty() {
        whole.checked_mul(scale)?
    } else {
        let numerator: u128 = fraction.parse().ok()?;
        whole.checked_mul(scale)? + numerator * scale / 10u128.pow(fraction.len() as u32)
    };
    u64::try_from(bytes).ok().filter(|&b| b <= i64::MAX as u64)
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
                .contains("512M, 1.5G or default")
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
        assert!(
            parse(&["1.5"]).unwrap_err().contains("at least 16 bytes"),
            "no unit: 1"
        );
        for bad in [
            "1..5G", "1.5.G", "G", ".", "1X", "1GB", "-1G", "1.5e3", "8E", "++1G",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} was taken");
        }
    }

    /// OpenSSH's `scan_scaled`: fractions with a unit, truncated to bytes;
    /// without a unit the fraction is dropped.
    #[test]
    fn decimal_amounts_as_openssh_reads_them() {
        let data = |s: &str| parse(&[s]).map(|l| l.data);
        assert_eq!(data("1.5G"), Ok(Some(3 << 29)));
        assert_eq!(data("0.5k"), Ok(Some(512)));
        assert_eq!(data(".25M"), Ok(Some(256 << 10)));
        assert_eq!(data("1.0001K"), Ok(Some(1024)), "truncated");
        assert_eq!(data("100.7"), Ok(Some(100)));
        assert_eq!(data("64B"), Ok(Some(64)));
        assert_eq!(data("2T"), Ok(Some(2 << 40)));
        assert_eq!(data("7E"), Ok(Some(7 << 60)));
        assert_eq!(data("+1G"), Ok(Some(1 << 30)));
    }
}
