//! Whom the service runs as: the user who ran `sudo portplane-agent install`
//! (`SUDO_USER`), else the current user, so the configs it rewrites never
//! become root-owned.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// From the password database, not `HOME` (sudo may keep root's).
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user \"{0}\" is not in the password database")]
    Unknown(String),
    #[error("cannot read the password database: {0}")]
    Lookup(nix::Error),
}

impl ServiceUser {
    /// `SUDO_USER` when set (and not root), else the effective user.
    pub fn invoking() -> Result<ServiceUser, UserError> {
        match std::env::var("SUDO_USER") {
            Ok(name) if !name.is_empty() && name != "root" => Self::named(&name),
            _ => {
                let uid = nix::unistd::geteuid();
                let user = nix::unistd::User::from_uid(uid)
                    .map_err(UserError::Lookup)?
                    .ok_or_else(|| UserError::Unknown(format!("uid {uid}")))?;
                Ok(Self::from(user))
            }
        }
    }

    pub fn named(name: &str) -> Result<ServiceUser, UserError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(UserError::Lookup)?
            .ok_or_else(|| UserError::Unknown(name.into()))?;
        Ok(Self::from(user))
    }
}

impl From<nix::unistd::User> for ServiceUser {
    fn from(u: nix::unistd::User) -> Self {
        ServiceUser {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }
    }
}
