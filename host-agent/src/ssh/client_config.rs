//! Reads an OpenSSH client config (`ssh -F FILE`) the way `ssh` does, for the
//! keys Lima writes: `Host` blocks with patterns (`*`, `?`, `!negation`),
//! first obtained value wins (every `IdentityFile` line accumulates), quoted
//! arguments, `key=value`, `~` and `%d` in paths, `Ciphers` in its `+`,
//! `-` and `^` forms, `RekeyLimit`, `Match all` / `host` / `originalhost`.
//! Pure: the caller reads the file.
//!
//! A keyword that would change how OpenSSH connects or verifies the host,
//! but that the agent does not implement (see [`UNSUPPORTED`]), is an error
//! naming the file, line and keyword when it applies to the host: skipping
//! it would silently connect somewhere else, or trust something `ssh` would
//! not. So is a `Match` the agent cannot evaluate (`exec`, `user`, ...).

use std::path::{Path, PathBuf};

pub use super::rekey_limit::RekeyLimit;

#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        problem: String,
    },
}

/// What `StrictHostKeyChecking` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// `yes`, and `ask` (the default: the agent cannot ask, so it refuses).
    Yes,
    /// `no` / `off`: unknown keys accepted; a changed key recorded in a
    /// known_hosts file is still refused.
    No,
    /// `accept-new`: unknown keys accepted; changed keys refused.
    AcceptNew,
}

/// The settings for one host alias, after matching every block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedHost {
    pub alias: String,
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub user_known_hosts_files: Vec<PathBuf>,
    pub strict_host_key_checking: StrictHostKeyChecking,
    /// `NoHostAuthenticationForLocalhost yes`: no host key check when the
    /// server's address is loopback (as OpenSSH does; Lima writes it).
    pub no_host_authentication_for_localhost: bool,
    /// Cipher names in preference order, already resolved against `default_ciphers`.
    pub ciphers: Vec<String>,
    /// `RekeyLimit`.
    pub rekey_limit: RekeyLimit,
}

/// Read `path` and resolve `alias` in it.
pub fn resolve_file(
    path: &Path,
    alias: &str,
    env: &SshEnv,
) -> Result<ResolvedHost, ClientConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientConfigError::Read {
        path: path.into(),
        source,
    })?;
    resolve(path, &text, alias, env)
}

/// What `ssh` would take from the environment.
#[derive(Debug, Clone)]
pub struct SshEnv {
    pub home: PathBuf,
    pub local_user: String,
    /// Supported ciphers in default preference order.
    pub default_ciphers: Vec<String>,
}

#[derive(Default)]
struct Obtained {
    hostname: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity_files: Vec<String>,
    user_known_hosts_files: Option<Vec<String>>,
    strict: Option<StrictHostKeyChecking>,
    no_auth_localhost: Option<bool>,
    ciphers: Option<String>,
    rekey_limit: Option<RekeyLimit>,
}

/// Keywords (lowercase) that change where or how OpenSSH connects, or how it
/// trusts the host, which the agent does not implement; each with what it
/// would do. Their value `none` (where OpenSSH accepts it) means unset.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("include", "reads more configuration from other files"),
    ("proxycommand", "connects through a command instead of TCP"),
    ("proxyjump", "connects through another SSH host"),
    ("hostkeyalias", "checks the host key under another name"),
    ("bindaddress", "connects from a specific local address"),
    ("bindinterface", "connects from a specific local interface"),
    ("canonicalizehostname", "rewrites the host name"),
    ("certificatefile", "authenticates with a certificate"),
    ("hostkeyalgorithms", "restricts the host key algorithms"),
    ("kexalgorithms", "restricts the key exchange algorithms"),
    ("macs", "restricts the MAC algorithms"),
    ("revokedhostkeys", "refuses revoked host keys"),
    ("knownhostscommand", "gets known host keys from a command"),
    ("verifyhostkeydns", "checks the host key against DNS"),
];

/// Resolve `alias` in `text` (read from `path`, which only names it in errors).
pub fn resolve(
    path: &Path,
    text: &str,
    alias: &str,
    env: &SshEnv,
) -> Result<ResolvedHost, ClientConfigError> {
    let mut got = Obtained::default();
    // Lines before the first Host/Match apply to every host.
    let mut active = true;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let invalid = |key: &str, problem: String| ClientConfigError::Invalid {
            path: path.into(),
            line,
            key: key.into(),
            problem,
        };
        let words = split_args(raw).map_err(|p| invalid("", p))?;
        let Some((keyword, args)) = words.split_first() else {
            continue;
        };
        let key = keyword.to_ascii_lowercase();
        match key.as_str() {
            "host" => {
                active = host_matches(args, alias);
                continue;
            }
            "match" => {
                // `Match host` sees the HostName obtained so far.
                let hostname = got
                    .hostname
                    .as_deref()
                    .map(|h| h.replace("%h", alias).replace("%%", "%"))
                    .unwrap_or_else(|| alias.to_string());
                active = match_matches(args, alias, &hostname).map_err(|p| invalid(keyword, p))?;
                continue;
            }
            _ => {}
        }
        if !active {
            continue;
        }
        if let Some((_, what)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
            let unset = args.first().is_some_and(|a| {
                a.eq_ignore_ascii_case("none")
                    || (matches!(key.as_str(), "canonicalizehostname" | "verifyhostkeydns")
                        && a.eq_ignore_ascii_case("no"))
            });
            if !unset {
                return Err(invalid(
                    keyword,
                    format!(
                        "applies to host {alias:?} and {what}, which portplane-agent does not \
                         implement; it would connect differently from `ssh`. Remove it, or \
                         point [ssh] config at a file without it"
                    ),
                ));
            }
        }
        let first = || {
            args.first()
                .cloned()
                .ok_or_else(|| invalid(keyword, "expected a value".into()))
        };
        match key.as_str() {
            "hostname" if got.hostname.is_none() => got.hostname = Some(first()?),
            "port" if got.port.is_none() => {
                let value = first()?;
                let port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        invalid(keyword, format!("expected a port 1-65535, got {value:?}"))
                    })?;
                got.port = Some(port);
            }
            "user" if got.user.is_none() => got.user = Some(first()?),
            "identityfile" => got.identity_files.push(first()?),
            "userknownhostsfile" if got.user_known_hosts_files.is_none() => {
                first()?;
                got.user_known_hosts_files = Some(args.to_vec());
            }
            "stricthostkeychecking" if got.strict.is_none() => {
                let value = first()?;
                got.strict = Some(match value.to_ascii_lowercase().as_str() {
                    "yes" | "ask" => StrictHostKeyChecking::Yes,
                    "no" | "off" => StrictHostKeyChecking::No,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    _ => {
                        return Err(invalid(
                            keyword,
                            format!("expected yes, no, ask, accept-new or off, got {value:?}"),
                        ));
                    }
                });
            }
            "nohostauthenticationforlocalhost" if got.no_auth_localhost.is_none() => {
                let value = first()?;
                got.no_auth_localhost = Some(match value.to_ascii_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => {
                        return Err(invalid(
                            keyword,
                            format!("expected yes or no, got {value:?}"),
                        ));
                    }
                });
            }
            "ciphers" if got.ciphers.is_none() => got.ciphers = Some(first()?),
            "rekeylimit" if got.rekey_limit.is_none() => {
                got.rekey_limit = Some(RekeyLimit::parse(args).map_err(|p| invalid(keyword, p))?);
            }
            _ => {}
        }
    }
    let hostname = got
        .hostname
        .map(|h| h.replace("%h", alias).replace("%%", "%"))
        .unwrap_or_else(|| alias.to_string());
    let user = got.user.unwrap_or_else(|| env.local_user.clone());
    let expand = |p: &str| expand_path(p, env, &hostname, &user);
    let identity_files = if got.identity_files.is_empty() {
        ["id_rsa", "id_ecdsa", "id_ed25519"]
            .iter()
            .map(|f| env.home.join(".ssh").join(f))
            .collect()
    } else {
        got.identity_files.iter().map(|p| expand(p)).collect()
    };
    let user_known_hosts_files = got
        .user_known_hosts_files
        .unwrap_or_else(|| vec!["~/.ssh/known_hosts".into(), "~/.ssh/known_hosts2".into()])
        .iter()
        .map(|p| expand(p))
        .collect();
    let ciphers = match got.ciphers {
        Some(spec) => resolve_ciphers(&spec, &env.default_ciphers),
        None => env.default_ciphers.clone(),
    };
    if ciphers.is_empty() {
        return Err(ClientConfigError::Invalid {
            path: path.into(),
            line: 0,
            key: "Ciphers".into(),
            problem: format!(
                "no supported cipher left; supported: {}",
                env.default_ciphers.join(",")
            ),
        });
    }
    Ok(ResolvedHost {
        alias: alias.into(),
        port: got.port.unwrap_or(22),
        user,
        identity_files,
        user_known_hosts_files,
        strict_host_key_checking: got.strict.unwrap_or(StrictHostKeyChecking::Yes),
        no_host_authentication_for_localhost: got.no_auth_localhost.unwrap_or(false),
        ciphers,
        rekey_limit: got.rekey_limit.unwrap_or_default(),
        hostname,
    })
}

/// `ssh_config(5)` `Ciphers`: `+list` appends to the default, `-list`
/// removes (patterns allowed), `^list` moves to the front, otherwise the list
/// replaces the default. Unsupported names are dropped.
pub fn resolve_ciphers(spec: &str, default: &[String]) -> Vec<String> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let supported = |c: &String| default.contains(c);
    let mut out: Vec<String> = if let Some(rest) = spec.strip_prefix('+') {
        let mut v = default.to_vec();
        v.extend(list(rest).into_iter().filter(supported));
        v
    } else if let Some(rest) = spec.strip_prefix('-') {
        let remove = list(rest);
        default
            .iter()
            .filter(|c| !remove.iter().any(|p| wildcard_match(p, c)))
            .cloned()
            .collect()
    } else if let Some(rest) = spec.strip_prefix('^') {
        let mut v: Vec<String> = list(rest).into_iter().filter(supported).collect();
        v.extend(default.iter().cloned());
        v
    } else {
        list(spec).into_iter().filter(supported).collect()
    };
    let mut seen = Vec::new();
    out.retain(|c| {
        let fresh = !seen.contains(c);
        seen.push(c.clone());
        fresh
    });
    out
}

/// A `Match` line: every criterion must hold. Understood: `all`, `host`
/// and `originalhost` with a comma-separated pattern list, each optionally
/// negated with `!`; anything else cannot be evaluated here and is an error.
fn match_matches(args: &[String], alias: &str, hostname: &str) -> Result<bool, String> {
    if args.is_empty() {
        return Err("expected criteria (all, host, originalhost)".into());
    }
    let mut all = true;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let (negated, criterion) = match word.strip_prefix('!') {
            Some(rest) => (true, rest.to_ascii_lowercase()),
            None => (false, word.to_ascii_lowercase()),
        };
        let holds = match criterion.as_str() {
            "all" => true,
            "host" | "originalhost" => {
                let patterns = words
                    .next()
                    .ok_or_else(|| format!("`{criterion}` expects a pattern list"))?;
                let subject = if criterion == "host" { hostname } else { alias };
                let list: Vec<String> = patterns.split(',').map(String::from).collect();
                host_matches(&list, subject)
            }
            other => {
                return Err(format!(
                    "portplane-agent cannot evaluate `Match {other}` (it understands all, host \
                     and originalhost), so it cannot tell whether this block applies to the \
                     host as `ssh` would; remove the block or point [ssh] config at a file \
                     without it"
                ));
            }
        };
        all &= holds != negated;
    }
    Ok(all)
}

/// A `Host` line matches when some pattern matches and no `!pattern` does.
fn host_matches(patterns: &[String], alias: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(negated) = p.strip_prefix('!') {
            if wildcard_match(negated, alias) {
                return false;
            }
        } else if wildcard_match(p, alias) {
            matched = true;
        }
    }
    matched
}

/// `*` and `?` globbing, case-insensitive like OpenSSH's host matching.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Split a config line into words: whitespace or one `=` separate the
/// keyword, double quotes group, `#` starts a comment outside quotes.
fn split_args(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let (mut in_quotes, mut has_word) = (false, false);
    for c in line.trim().chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            '#' if !in_quotes && !has_word => break,
            c if !in_quotes && (c.is_whitespace() || (c == '=' && words.is_empty())) => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if in_quotes {
        return Err("unbalanced double quote".into());
    }
    if has_word {
        words.push(current);
    }
    Ok(words)
}

fn expand_path(p: &str, env: &SshEnv, hostname: &str, user: &str) -> PathBuf {
    let p = p
        .replace("%d", &env.home.to_string_lossy())
        .replace("%h", hostname)
        .replace("%r", user)
        .replace("%u", &env.local_user)
        .replace("%%", "%");
    crate::config::expand_tilde(Path::new(&p), &env.home)
}

#[cfg(test)]
#[path = "client_config_tests.rs"]
mod tests;
