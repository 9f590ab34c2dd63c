//! The systemd unit rendered from `systemd/portplane-agent.service` and the
//! `systemctl` commands that enable it.

use std::path::Path;

use super::UNIT;
use super::install::{Inputs, InstallError};

/// The template, kept in the repository's top-level `systemd/` folder.
pub const TEMPLATE: &str = include_str!("../../../systemd/portplane-agent.service");

/// The unit for `inputs`. Paths with whitespace, quotes or backslashes are
/// refused: unit-file quoting differs per key, and such paths are rare.
pub fn render(inputs: &Inputs) -> Result<String, InstallError> {
    let check = |what: &str, p: &Path| -> Result<String, InstallError> {
        let s = p.display().to_string();
        if s.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
        {
            return Err(InstallError::Unsupported(format!(
                "{what} {s:?}: a systemd unit cannot hold a path with spaces, quotes or \
                 backslashes here; move it to a plain path"
            )));
        }
        // `%` starts a specifier in unit files.
        Ok(s.replace('%', "%%"))
    };
    let mut read_write = Vec::new();
    for p in &inputs.read_write {
        // "-": a folder removed later must not keep the tunnel from starting.
        read_write.push(format!("-{}", check("writable folder", p)?));
    }
    Ok(TEMPLATE
        .replace("{{USER}}", &inputs.user.name)
        .replace("{{HOME}}", &check("home", &inputs.user.home)?)
        .replace("{{BINARY}}", &check("binary", &inputs.binary)?)
        .replace("{{CONFIG}}", &check("config", &inputs.config)?)
        .replace("{{READ_WRITE_PATHS}}", &read_write.join(" ")))
}

pub fn daemon_reload() -> Vec<String> {
    vec!["systemctl".into(), "daemon-reload".into()]
}

pub fn enable_now() -> Vec<String> {
    vec![
        "systemctl".into(),
        "enable".into(),
        "--now".into(),
        UNIT.into(),
    ]
}

pub fn restart() -> Vec<String> {
    vec!["systemctl".into(), "restart".into(), UNIT.into()]
}

pub fn disable_now() -> Vec<String> {
    vec![
        "systemctl".into(),
        "disable".into(),
        "--now".into(),
        UNIT.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::user::ServiceUser;
    use std::path::PathBuf;

    fn inputs(config: &str) -> Inputs {
        Inputs {
            binary: PathBuf::from("/usr/local/bin/portplane-agent"),
            config: PathBuf::from(config),
            user: ServiceUser {
                name: "joel".into(),
                uid: 1000,
                gid: 1000,
                home: PathBuf::from("/home/joel"),
            },
            read_write: vec![PathBuf::from("/home/joel/.kube")],
            configs: Vec::new(),
        }
    }

    #[test]
    fn renders_absolute_paths_and_escapes_specifiers() {
        let unit = render(&inputs("/home/joel/100%/agent.toml")).unwrap();
        assert!(
            unit.contains(
                "ExecStart=/usr/local/bin/portplane-agent run --config /home/joel/100%%/agent.toml"
            ),
            "{unit}"
        );
        assert!(
            unit.contains("ReadWritePaths=-/home/joel/.kube\n"),
            "{unit}"
        );
        assert!(unit.contains("User=joel\n"), "{unit}");
        assert!(!unit.contains("{{"), "every placeholder filled: {unit}");
    }

    #[test]
    fn a_path_with_spaces_is_refused_naming_it() {
        let err = render(&inputs("/home/joel/my configs/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("my configs"), "{err}");
    }
}
