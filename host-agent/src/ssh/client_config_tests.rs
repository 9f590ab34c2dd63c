use super::*;

fn env() -> SshEnv {
    SshEnv {
        home: PathBuf::from("/Users/joel"),
        local_user: "joel".into(),
        default_ciphers: vec![
            "chacha20-poly1305@openssh.com".into(),
            "aes256-gcm@openssh.com".into(),
            "aes128-gcm@openssh.com".into(),
            "aes128-ctr".into(),
        ],
    }
}

fn resolve_text(text: &str, alias: &str) -> ResolvedHost {
    resolve(Path::new("/x/ssh.config"), text, alias, &env()).unwrap()
}

/// What Lima 1.x writes to ~/.colima/_lima/colima/ssh.config.
const LIMA: &str = r#"# This SSH config file can be passed to 'ssh -F'.
# This file is created by Lima, but not used by Lima itself currently.
# Modifications to this file will be lost on restarting the Lima instance.
Host lima-colima
  IdentityFile "/Users/joel/.colima/_lima/_config/user"
  IdentityFile "/Users/joel/.ssh/id_ed25519"
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  NoHostAuthenticationForLocalhost yes
  PreferredAuthentications publickey
  Compression no
  BatchMode yes
  IdentitiesOnly yes
  GSSAPIAuthentication no
  Ciphers "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
  User joel
  ControlMaster auto
  ControlPath "/Users/joel/.colima/_lima/colima/ssh.sock"
  ControlPersist yes
  Hostname 127.0.0.1
  Port 51822
"#;

#[test]
fn lima_file_resolves_like_ssh_g() {
    let h = resolve_text(LIMA, "lima-colima");
    assert_eq!(h.hostname, "127.0.0.1");
    assert_eq!(h.port, 51822);
    assert_eq!(h.user, "joel");
    assert_eq!(
        h.identity_files,
        vec![
            PathBuf::from("/Users/joel/.colima/_lima/_config/user"),
            PathBuf::from("/Users/joel/.ssh/id_ed25519")
        ]
    );
    assert_eq!(h.user_known_hosts_files, vec![PathBuf::from("/dev/null")]);
    assert_eq!(h.strict_host_key_checking, StrictHostKeyChecking::No);
    assert_eq!(
        h.ciphers,
        [
            "aes128-gcm@openssh.com",
            "aes256-gcm@openssh.com",
            "chacha20-poly1305@openssh.com",
            "aes128-ctr"
        ]
    );
}

#[test]
fn other_alias_gets_defaults_not_lima_values() {
    let h = resolve_text(LIMA, "github.com");
    assert_eq!(h.hostname, "github.com");
    assert_eq!(h.port, 22);
    assert_eq!(h.user, "joel");
    assert_eq!(h.strict_host_key_checking, StrictHostKeyChecking::Yes);
    assert_eq!(h.ciphers, env().default_ciphers);
    assert_eq!(
        h.user_known_hosts_files[0],
        PathBuf::from("/Users/joel/.ssh/known_hosts")
    );
}

#[test]
fn first_obtained_value_wins_and_identity_files_accumulate() {
    let text = "Host lima-*\n  Port 2222\n  IdentityFile ~/.ssh/a\nHost *\n  Port 22\n  User root\n  IdentityFile=~/.ssh/b\n";
    let h = resolve_text(text, "lima-colima");
    assert_eq!(h.port, 2222);
    assert_eq!(h.user, "root");
    assert_eq!(
        h.identity_files,
        vec![
            PathBuf::from("/Users/joel/.ssh/a"),
            PathBuf::from("/Users/joel/.ssh/b")
        ]
    );
}

#[test]
fn negated_pattern_excludes() {
    let text = "Host * !lima-colima\n  Port 1\nHost lima-?olima\n  Port 2\n";
    assert_eq!(resolve_text(text, "lima-colima").port, 2);
    assert_eq!(resolve_text(text, "other").port, 1);
}

#[test]
fn global_lines_before_any_host_apply_and_match_all_too() {
    let text = "User early\nHost nothing\n  User no\nMatch all\n  Port 7\n";
    let h = resolve_text(text, "lima-colima");
    assert_eq!(h.user, "early");
    assert_eq!(h.port, 7);
}

#[test]
fn keywords_are_case_insensitive_and_comments_ignored() {
    let text = "host LIMA-COLIMA # trailing\n  HOSTNAME 127.0.0.2\n  pOrT=4000\n  # Port 5\n";
    let h = resolve_text(text, "lima-colima");
    assert_eq!(h.hostname, "127.0.0.2");
    assert_eq!(h.port, 4000);
}

#[test]
fn user_known_hosts_files_take_every_argument_and_percent_tokens() {
    let text = "Host x\n  UserKnownHostsFile %d/.ssh/kh \"/tmp/with space\"\n";
    let h = resolve_text(text, "x");
    assert_eq!(
        h.user_known_hosts_files,
        vec![
            PathBuf::from("/Users/joel/.ssh/kh"),
            PathBuf::from("/tmp/with space")
        ]
    );
}

#[test]
fn bad_port_names_file_line_key_and_expectation() {
    let err = resolve(
        Path::new("/x/ssh.config"),
        "Host x\n  Port abc\n",
        "x",
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("/x/ssh.config:2: `Port`"), "{err}");
    assert!(err.contains("expected a port"), "{err}");
}

#[test]
fn unbalanced_quote_is_an_error() {
    let err = resolve(
        Path::new("/x/c"),
        "Host x\n  IdentityFile \"/a\n",
        "x",
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("quote"), "{err}");
}

#[test]
fn cipher_forms() {
    let d = env().default_ciphers;
    assert_eq!(
        resolve_ciphers("aes128-ctr,bogus", &d),
        ["aes128-ctr"],
        "plain list replaces; unsupported dropped"
    );
    assert_eq!(
        resolve_ciphers("-chacha20*", &d),
        [
            "aes256-gcm@openssh.com",
            "aes128-gcm@openssh.com",
            "aes128-ctr"
        ]
    );
    assert_eq!(resolve_ciphers("+aes128-ctr", &d), d);
    assert_eq!(resolve_ciphers("^aes128-ctr", &d)[0], "aes128-ctr");
    assert_eq!(resolve_ciphers("^aes128-ctr", &d).len(), d.len());
}

#[test]
fn no_supported_cipher_is_an_error() {
    let err = resolve(Path::new("/x/c"), "Ciphers 3des-cbc\n", "x", &env())
        .unwrap_err()
        .to_string();
    assert!(err.contains("Ciphers"), "{err}");
}

#[test]
fn wildcards() {
    assert!(wildcard_match("lima-*", "lima-colima"));
    assert!(wildcard_match("*", ""));
    assert!(wildcard_match("l?ma", "lima"));
    assert!(!wildcard_match("lima", "lima-colima"));
    assert!(wildcard_match("*colima", "lima-colima"));
}

fn resolve_err(text: &str, alias: &str) -> String {
    resolve(Path::new("/x/ssh.config"), text, alias, &env())
        .unwrap_err()
        .to_string()
}

#[test]
fn lima_asks_not_to_check_localhost_host_keys() {
    assert!(resolve_text(LIMA, "lima-colima").no_host_authentication_for_localhost);
    assert!(!resolve_text("Host x\n", "x").no_host_authentication_for_localhost);
}

/// Each of these changes how `ssh` would connect to the host; skipping it
/// would connect differently, so it is an error naming file, line, keyword.
#[test]
fn unimplemented_keywords_in_the_matched_block_are_errors() {
    for line in [
        "ProxyCommand nc %h %p",
        "ProxyJump bastion",
        "HostKeyAlias vm",
        "Include other.config",
        "BindAddress 127.0.0.2",
    ] {
        let text = format!("Host other\n  {line}\nHost lima-colima\n  Port 2\n  {line}\n");
        let err = resolve_err(&text, "lima-colima");
        let keyword = line.split(' ').next().unwrap();
        assert!(
            err.starts_with(&format!("/x/ssh.config:5: `{keyword}`:")),
            "{err}"
        );
        assert!(err.contains("does not implement"), "{err}");
    }
    // The same keywords in a block for another host, or set to none: fine.
    let h = resolve_text(
        "Host other\n  ProxyJump bastion\nHost lima-colima\n  ProxyCommand none\n  Port 2\n",
        "lima-colima",
    );
    assert_eq!(h.port, 2);
}

#[test]
fn match_host_and_originalhost_are_evaluated_other_forms_are_errors() {
    let text = "Host lima-colima\n  Hostname 127.0.0.1\nMatch host 127.0.0.*\n  Port 7\nMatch originalhost !lima-*\n  User nobody\n";
    let h = resolve_text(text, "lima-colima");
    assert_eq!((h.port, h.user.as_str()), (7, "joel"));
    let err = resolve_err("Match exec \"true\"\n  Port 7\n", "lima-colima");
    assert!(err.starts_with("/x/ssh.config:1: `Match`:"), "{err}");
    assert!(err.contains("cannot evaluate `Match exec`"), "{err}");
}

#[test]
fn rekey_limit_first_value_wins_and_a_bad_one_names_file_and_line() {
    let h = resolve_text(
        "Host vm\n  RekeyLimit 256M 1h\nHost *\n  RekeyLimit 1G\n",
        "vm",
    );
    assert_eq!(
        h.rekey_limit,
        RekeyLimit {
            data: Some(256 << 20),
            time: Some(std::time::Duration::from_secs(3600)),
        }
    );
    assert_eq!(
        resolve_text("Host vm\n", "vm").rekey_limit,
        RekeyLimit::default()
    );
    let err = resolve(
        Path::new("/x/ssh.config"),
        "Host vm\n  RekeyLimit lots\n",
        "vm",
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("/x/ssh.config:2: `RekeyLimit`: expected an amount of data"),
        "{err}"
    );
}
