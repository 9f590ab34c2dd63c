//! Host key checking as the client config says: `UserKnownHostsFile` and
//! `StrictHostKeyChecking`. A key that differs from a recorded one is always
//! refused; an unrecorded key is refused only under `yes` (or `ask`).

use std::path::PathBuf;

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
}

impl HostKeyPolicy {
    pub fn check(&self, key: &PublicKey) -> HostKeyVerdict {
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
            StrictHostKeyChecking::No | StrictHostKeyChecking::AcceptNew => HostKeyVerdict::Accept,
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
        }
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
