//! `talosctl cluster create` renames a re-created cluster `<name>-1`,
//! `<name>-2`, ... (and its context `admin@<name>-1`); the newest wins.

/// The generation of `name` in the family of `base`: 0 for `base` itself,
/// N for `base-N`, also behind a `user@` prefix. `None` when unrelated.
pub fn generation(name: &str, base: &str) -> Option<u32> {
    let of = |n: &str| -> Option<u32> {
        if n == base {
            return Some(0);
        }
        let digits = n.strip_prefix(base)?.strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    of(name).or_else(|| of(name.split_once('@')?.1))
}

#[cfg(test)]
mod tests {
    use super::generation;

    #[test]
    fn follows_talosctl_renames() {
        assert_eq!(generation("joelclaw", "joelclaw"), Some(0));
        assert_eq!(generation("joelclaw-1", "joelclaw"), Some(1));
        assert_eq!(generation("admin@joelclaw-12", "joelclaw"), Some(12));
        assert_eq!(generation("admin@joelclaw", "joelclaw"), Some(0));
        assert_eq!(generation("admin@joelclaw", "admin@joelclaw"), Some(0));
    }

    #[test]
    fn unrelated_names_are_not_generations() {
        for n in [
            "joelclaw-dev",
            "joelclaw-",
            "joelclaw-+1",
            "xjoelclaw",
            "joelclaw2",
            "kind-kind",
        ] {
            assert_eq!(generation(n, "joelclaw"), None, "{n}");
        }
    }
}
