//! Secrets in configuration: from the environment, a file, or a command
//! (e.g. a secret manager's CLI). The value is never logged or shown; its
//! `Debug` is redacted, and errors name where it was looked for, not what
//! it is.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ConfigError;

/// Where a secret comes from.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretRef {
    Env { env: String },
    File { file: PathBuf },
    Command { command: Vec<String> },
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env { env } => write!(f, "SecretRef::Env({env})"),
            SecretRef::File { file } => write!(f, "SecretRef::File({})", file.display()),
            SecretRef::Command { command } => {
                write!(
                    f,
                    "SecretRef::Command({})",
                    command.first().map_or("", |s| s.as_str())
                )
            }
        }
    }
}

/// A resolved secret. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl SecretRef {
    /// Reads the secret. `what` names it in errors (e.g. `stores.twenty.api_key`).
    pub fn resolve(&self, what: &str) -> Result<Secret, ConfigError> {
        let raw = match self {
            SecretRef::Env { env } => std::env::var(env).map_err(|_| {
                ConfigError(format!("{what}: environment variable {env} is not set"))
            })?,
            SecretRef::File { file } => {
                check_file_permissions(file, what)?;
                std::fs::read_to_string(file).map_err(|e| {
                    ConfigError(format!(
                        "{what}: cannot read secret file {}: {}",
                        file.display(),
                        e.kind()
                    ))
                })?
            }
            SecretRef::Command { command } => {
                let (prog, args) = command
                    .split_first()
                    .ok_or_else(|| ConfigError(format!("{what}: command is empty")))?;
                let out = std::process::Command::new(prog)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .output()
                    .map_err(|e| ConfigError(format!("{what}: cannot run {prog}: {}", e.kind())))?;
                if !out.status.success() {
                    return Err(ConfigError(format!(
                        "{what}: {prog} failed ({})",
                        out.status
                    )));
                }
                String::from_utf8(out.stdout).map_err(|_| {
                    ConfigError(format!("{what}: {prog} printed something that is not text"))
                })?
            }
        };
        let value = raw.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(ConfigError(format!("{what}: the secret is empty")));
        }
        Ok(Secret(value))
    }
}

/// A secret file must not be readable or writable by everyone.
fn check_file_permissions(file: &std::path::Path, what: &str) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(file) {
            let mode = meta.permissions().mode();
            if mode & 0o006 != 0 {
                return Err(ConfigError(format!(
                    "{what}: secret file {} is readable or writable by everyone (mode {:o}); run chmod 600 on it",
                    file.display(),
                    mode & 0o777
                )));
            }
        }
    }
    let _ = (file, what);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_and_command_resolve_and_never_show() {
        std::env::set_var("CONTACT_SYNC_TEST_SECRET", "s3cr3t-env");
        let s = SecretRef::Env {
            env: "CONTACT_SYNC_TEST_SECRET".into(),
        }
        .resolve("x")
        .unwrap();
        assert_eq!(s.expose(), "s3cr3t-env");
        assert!(!format!("{s:?}").contains("s3cr3t"));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "s3cr3t-file\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let s = SecretRef::File { file: f.clone() }.resolve("x").unwrap();
        assert_eq!(s.expose(), "s3cr3t-file");

        let s = SecretRef::Command {
            command: vec!["printf".into(), "s3cr3t-cmd".into()],
        }
        .resolve("x")
        .unwrap();
        assert_eq!(s.expose(), "s3cr3t-cmd");
    }

    #[test]
    fn errors_name_the_place_not_the_value() {
        let e = SecretRef::Env {
            env: "CONTACT_SYNC_NOT_SET_ANYWHERE".into(),
        }
        .resolve("stores.twenty.api_key")
        .unwrap_err();
        assert!(
            e.0.contains("stores.twenty.api_key") && e.0.contains("CONTACT_SYNC_NOT_SET_ANYWHERE"),
            "{e}"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("key");
            std::fs::write(&f, "s3cr3t").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = SecretRef::File { file: f }.resolve("k").unwrap_err();
            assert!(e.0.contains("chmod 600") && !e.0.contains("s3cr3t"), "{e}");
        }
        let e = SecretRef::Command {
            command: vec!["false".into()],
        }
        .resolve("k")
        .unwrap_err();
        assert!(e.0.contains("false failed"), "{e}");
    }

    #[test]
    fn parses_from_toml() {
        #[derive(Deserialize)]
        struct T {
            a: SecretRef,
            b: SecretRef,
            c: SecretRef,
        }
        let t: T = toml::from_str(
            "a = { env = \"X\" }\nb = { file = \"/k\" }\nc = { command = [\"pass\", \"show\", \"x\"] }\n",
        )
        .unwrap();
        assert_eq!(t.a, SecretRef::Env { env: "X".into() });
        assert_eq!(t.b, SecretRef::File { file: "/k".into() });
        assert!(matches!(t.c, SecretRef::Command { .. }));
    }
}
