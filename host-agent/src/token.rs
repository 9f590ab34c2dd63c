//! The agent's controller credential: a ServiceAccount token bound to the
//! audience `portplane.dev/agent`, kept in `[controller] token_file` (mode
//! 0600). `enroll` writes it; the controller link re-reads it on every
//! reconnect, so a rotated token takes effect without a restart.
//!
//! The token's contents are never logged; only its path and expiry.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// The audience the controller reviews tokens for (its `auth::AUDIENCE`).
pub const AUDIENCE: &str = "portplane.dev/agent";
/// A token expiring sooner than this is warned about (logs and `status`).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// Larger token files are refused unread (the controller refuses such
/// tokens too); a ServiceAccount JWT is about 1 KiB.
pub const MAX_TOKEN_BYTES: u64 = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{path}: cannot read the controller token: {source} (run `portplane-agent enroll --config FILE` to get one)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem} (run `portplane-agent enroll --config FILE` for a fresh token)")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path}: cannot write the token: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Read the token in `path`: trimmed, non-empty, at most
/// [`MAX_TOKEN_BYTES`], printable ASCII (it goes into an HTTP header).
pub fn read(path: &Path) -> Result<String, TokenError> {
    let read_err = |source| TokenError::Read {
        path: path.into(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    let invalid = |problem: String| TokenError::Invalid {
        path: path.into(),
        problem,
    };
    if size > MAX_TOKEN_BYTES {
        return Err(invalid(format!(
            "{size} bytes; expected a ServiceAccount token of at most {MAX_TOKEN_BYTES} bytes"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("empty; expected a ServiceAccount token".into()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "expected a ServiceAccount token (printable ASCII, no spaces)".into(),
        ));
    }
    Ok(token.to_string())
}

/// When the token expires: the JWT's `exp` claim (seconds since the epoch).
/// `None` when it is not a JWT or has no `exp` (the controller decides).
pub fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// A warning when `token` expires within [`EXPIRY_WARNING`] of `now` (or
/// has expired); `None` when it has longer or its expiry is unknown.
pub fn expiry_warning(token: &str, now: SystemTime) -> Option<String> {
    let exp = expiry(token)?;
    match exp.duration_since(now) {
        Err(_) => Some(
            "the controller token has expired; run `portplane-agent enroll --config FILE`".into(),
        ),
        Ok(left) if left < EXPIRY_WARNING => Some(format!(
            "the controller token expires in {} days; run `portplane-agent enroll --config FILE` before then",
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// Replace `path` with `token`, mode 0600, atomically (temp file in the
/// same folder, fsync, rename); the folder is created 0700 when missing.
pub fn write(path: &Path, token: &str) -> Result<(), TokenError> {
    write_file(path, &format!("{}\n", token.trim()))
}

/// [`write`] for any text (the controller's CA), written as given.
pub fn write_file(path: &Path, text: &str) -> Result<(), TokenError> {
    let err = |source| TokenError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".into());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // An existing temp file keeps its mode through open(); force it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(&format!(r#"{{"aud":["portplane.dev/agent"],"exp":{exp}}}"#))
        )
    }

    #[test]
    fn expiry_is_read_from_the_jwt() {
        let t = jwt(2_000_000_000);
        assert_eq!(
            expiry(&t),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(expiry("not-a-jwt"), None);
    }

    #[test]
    fn warns_within_fourteen_days_and_after_expiry() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let in_days = |d: u64| jwt(1_000_000_000 + d * 86_400);
        assert_eq!(expiry_warning(&in_days(30), now), None);
        let w = expiry_warning(&in_days(13), now).unwrap();
        assert!(w.contains("13 days"), "{w}");
        let w = expiry_warning(&jwt(999_999_000), now).unwrap();
        assert!(w.contains("expired"), "{w}");
        assert_eq!(expiry_warning("opaque", now), None);
    }

    #[test]
    fn write_is_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent-token");
        write(&path, "abc.def.ghi").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read(&path).unwrap(), "abc.def.ghi");
        // Rotation replaces it, mode kept.
        write(&path, "new.token.x").unwrap();
        assert_eq!(read(&path).unwrap(), "new.token.x");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn bad_files_are_named_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        let e = read(&missing).unwrap_err().to_string();
        assert!(e.contains("none") && e.contains("enroll"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read(&empty).unwrap_err().to_string().contains("empty"));
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(MAX_TOKEN_BYTES as usize + 1)).unwrap();
        assert!(read(&big).unwrap_err().to_string().contains("at most"));
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "a b").unwrap();
        assert!(read(&spaced).is_err());
    }
}
