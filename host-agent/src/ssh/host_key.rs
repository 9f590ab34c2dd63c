//! Host key checking as OpenSSH does it for the client config's
//! `UserKnownHostsFile`, `StrictHostKeyChecking` and
//! `NoHostAuthenticationForLocalhost` (ssh_config(5), sshconnect.c):
//! - a key that differs from a recorded one is refused (OpenSSH would go on
//!   under `no`, but with port forwarding disabled: no tunnel either way);
//! - an unrecorded key is refused under `yes` (or `ask`: nobody to ask); under
//!   `accept-new` and `no` it is accepted and recorded in the first
//!   `UserKnownHostsFile`, so that a later change is refused;
//! - with `NoHostAuthenticationForLocalhost yes` and a loopback server
//!   address, no check at all (Lima writes this: its sshd is on 127.0.0.1).

use std::io::Write;
use std::path::{Path, PathBuf};

use russh::keys::PublicKey;

use super::client_config::StrictHostKeyChecking;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyVerdict {
    Accept,
    Refuse(String),
}

/// Who the server should be, as the client config describes it.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    pub host: String,
    pub port: u16,
    pub known_hosts_files: Vec<PathBuf>,
    pub strict: StrictHostKeyChecking,
    pub no_host_authentication_for_localhost: bool,
    /// The address we connected to is loopback.
    pub loopback_peer: bool,
}

impl HostKeyPolicy {
    pub fn check(&self, key: &PublicKey) -> HostKeyVerdict {
        if self.no_host_authentication_for_localhost && self.loopback_peer {
            tracing::debug!(
                host = self.host,
                "NoHostAuthenticationForLocalhost: not checking the host key of a loopback server"
            );
            return HostKeyVerdict::Accept;
        }
        let fingerprint = key.fingerprint(Default::default());
        for file in &self.known_hosts_files {
            if file.as_os_str() == "/dev/null" || !file.exists() {
                continue;
            }
            match russh::keys::check_known_hosts_path(&self.host, self.port, key, file) {
                Ok(true) => return HostKeyVerdict::Accept,
                Ok(false) => {}
                Err(russh::keys::Error::KeyChanged { line }) => {
                    return HostKeyVerdict::Refuse(format!(
                        "host key for {}:{} CHANGED: the server now offers {fingerprint}, \
                         but {}:{line} records another key. If the VM was rebuilt, remove that \
                         line (ssh-keygen -R '[{}]:{}' -f {}); otherwise someone may be \
                         intercepting the connection",
                        self.host,
                        self.port,
                        file.display(),
                        self.host,
                        self.port,
                        file.display()
                    ));
                }
                Err(e) => {
                    return HostKeyVerdict::Refuse(format!(
                        "cannot read known hosts file {}: {e}",
                        file.display()
                    ));
                }
            }
        }
        match self.strict {
            StrictHostKeyChecking::No | StrictHostKeyChecking::AcceptNew => {
                self.record(key);
                HostKeyVerdict::Accept
            }
            StrictHostKeyChecking::Yes => HostKeyVerdict::Refuse(format!(
                "host key {fingerprint} for {}:{} is not in any UserKnownHostsFile ({}) and \
                 StrictHostKeyChecking is yes",
                self.host,
                self.port,
                self.known_hosts_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Add `key` to the first UserKnownHostsFile, as OpenSSH does for a new
    /// host; like OpenSSH, a failure is a warning, not a refusal.
    fn record(&self, key: &PublicKey) {
        let Some(file) = self.known_hosts_files.first() else {
            return;
        };
        if file.as_os_str() == "/dev/null" {
            return;
        }
        match append_known_host(file, &self.host, self.port, key) {
            Ok(()) => tracing::info!(
                host = self.host,
                port = self.port,
                file = %file.display(),
                "recorded the new host key"
            ),
            Err(error) => tracing::warn!(
                file = %file.display(),
                %error,
                "cannot record the host key; a changed key will not be detected"
            ),
        }
    }
}

/// Append `[host]:port key` (or `host key` on port 22) to `file`, creating
/// its folder (0700) and the file (0600) when missing.
fn append_known_host(file: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let existing = std::fs::read(file).unwrap_or_default();
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)?;
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let key = key.to_openssh().map_err(std::io::Error::other)?;
    let newline = if existing.is_empty() || existing.ends_with(b"\n") {
        ""
    } else {
        "\n"
    };
    out.write_all(format!("{newline}{name} {key}\n").as_bytes())?;
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHmLN8+Qub1Iu8yARTzIYe0Kq60qKb+Jjdm5t2yj4N+F";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBgCI3qQ2eEgiIh6zsRh6vkDHuOSOEbwG6YTQ4s1SCW1";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    fn policy(files: Vec<PathBuf>, strict: StrictHostKeyChecking) -> HostKeyPolicy {
        HostKeyPolicy {
            host: "127.0.0.1".into(),
            port: 2222,
            known_hosts_files: files,
            strict,
            no_host_authentication_for_localhost: false,
            loopback_peer: true,
        }
    }

    /// OpenSSH's accept-new: the first key is recorded, a different one
    /// later is refused (it was accepted every time before).
    #[test]
    fn accept_new_records_the_first_key_and_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ssh/known_hosts");
        let p = policy(vec![file.clone()], StrictHostKeyChecking::AcceptNew);
        assert_eq!(p.check(&key(KEY_A)), HostKeyVerdict::Accept);
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, format!("[127.0.0.1]:2222 {KEY_A}\n"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(p.check(&key(KEY_A)), HostKeyVerdict::Accept);
        assert!(matches!(p.check(&key(KEY_B)), HostKeyVerdict::Refuse(m) if m.contains("CHANGED")));
    }

    #[test]
    fn no_host_authentication_for_localhost_skips_the_check_for_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("[127.0.0.1]:2222 {KEY_A}\n")).unwrap();
        let mut p = policy(vec![file], StrictHostKeyChecking::Yes);
        p.no_host_authentication_for_localhost = true;
        assert_eq!(p.check(&key(KEY_B)), HostKeyVerdict::Accept);
        p.loopback_peer = false;
        assert!(matches!(p.check(&key(KEY_B)), HostKeyVerdict::Refuse(_)));
    }

    #[test]
    fn lima_dev_null_and_no_accepts() {
        let p = policy(vec!["/dev/null".into()], StrictHostKeyChecking::No);
        assert_eq!(p.check(&key(KEY_A)), HostKeyVerdict::Accept);
    }

    #[test]
    fn strict_refuses_unknown() {
        let p = policy(vec!["/dev/null".into()], StrictHostKeyChecking::Yes);
        assert!(
            matches!(p.check(&key(KEY_A)), HostKeyVerdict::Refuse(m) if m.contains("not in any"))
        );
    }

    #[test]
    fn recorded_key_accepts_and_changed_key_refuses_even_when_not_strict() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("[127.0.0.1]:2222 {KEY_A}\n")).unwrap();
        let p = policy(vec![file.clone()], StrictHostKeyChecking::Yes);
        assert_eq!(p.check(&key(KEY_A)), HostKeyVerdict::Accept);
        let lax = policy(vec![file], StrictHostKeyChecking::No);
        match lax.check(&key(KEY_B)) {
            HostKeyVerdict::Refuse(m) => assert!(m.contains("CHANGED"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
