//! The LaunchDaemon: the plist rendered from `launchd/dev.portplane.agent.plist`
//! and the `launchctl` commands that (re)load it. Never the legacy
//! `load`/`unload`: `bootout`, `enable`, `bootstrap`, `kickstart -k`.

use super::install::Inputs;
use super::{LABEL, Paths};

/// The template, kept in the repository's top-level `launchd/` folder.
pub const TEMPLATE: &str = include_str!("../../../launchd/dev.portplane.agent.plist");

/// The plist for `inputs`, every value XML-escaped.
pub fn render(inputs: &Inputs, paths: &Paths) -> String {
    TEMPLATE
        .replace("{{LABEL}}", LABEL)
        .replace("{{BINARY}}", &xml(&inputs.binary.display().to_string()))
        .replace("{{CONFIG}}", &xml(&inputs.config.display().to_string()))
        .replace("{{USER}}", &xml(&inputs.user.name))
        .replace("{{HOME}}", &xml(&inputs.user.home.display().to_string()))
        .replace("{{LOG}}", &xml(&paths.launchd_log().display().to_string()))
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

pub fn target() -> String {
    format!("system/{LABEL}")
}

/// Stops a loaded agent; fails harmlessly when it is not loaded.
pub fn bootout() -> Vec<String> {
    vec!["launchctl".into(), "bootout".into(), target()]
}

pub fn start(paths: &Paths) -> Vec<Vec<String>> {
    vec![
        vec!["launchctl".into(), "enable".into(), target()],
        vec![
            "launchctl".into(),
            "bootstrap".into(),
            "system".into(),
            paths.plist().display().to_string(),
        ],
        vec![
            "launchctl".into(),
            "kickstart".into(),
            "-k".into(),
            target(),
        ],
    ]
}

pub fn disable() -> Vec<String> {
    vec!["launchctl".into(), "disable".into(), target()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::user::ServiceUser;
    use std::path::PathBuf;

    #[test]
    fn values_are_xml_escaped_and_every_placeholder_filled() {
        let inputs = Inputs {
            binary: PathBuf::from("/usr/local/bin/portplane-agent"),
            config: PathBuf::from("/Users/joel/a&b <c>/agent.toml"),
            user: ServiceUser {
                name: "joel".into(),
                uid: 501,
                gid: 20,
                home: PathBuf::from("/Users/joel"),
            },
            read_write: Vec::new(),
            configs: Vec::new(),
        };
        let plist = render(&inputs, &Paths::new(None));
        assert!(
            plist.contains("<string>/Users/joel/a&amp;b &lt;c&gt;/agent.toml</string>"),
            "{plist}"
        );
        assert!(
            plist.contains("<string>/Library/Logs/portplane/agent.log</string>"),
            "{plist}"
        );
        assert!(!plist.contains("{{"), "{plist}");
    }
}
