//! Service definitions for `contact-sync service systemd|launchd`: the
//! daemon restarted on failure, secrets from an environment file beside the
//! configuration (`<config dir>/contact-sync.env`, mode 0600), never inline.

use std::path::{Path, PathBuf};

/// The name of the environment file that holds secrets, beside the config.
pub const ENV_FILE_NAME: &str = "contact-sync.env";

/// A path or name that cannot go into a service file safely.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} {value:?} cannot go into a service file: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

fn invalid(what: &'static str, value: &str, why: &'static str) -> ServiceError {
    ServiceError::Invalid {
        what,
        value: value.to_string(),
        why,
    }
}

/// An absolute path without control characters, as UTF-8 text.
fn path_text<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, ServiceError> {
    let text = p
        .to_str()
        .ok_or_else(|| invalid(what, &p.to_string_lossy(), "it is not valid UTF-8"))?;
    if !p.is_absolute() {
        return Err(invalid(what, text, "it must be an absolute path"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(what, text, "it contains control characters"));
    }
    Ok(text)
}

/// `<config dir>/contact-sync.env`.
pub fn env_file_for(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("/"))
        .join(ENV_FILE_NAME)
}

/// One word of a systemd command line: `%` doubled (specifiers), and
/// quoted with backslash escapes when it has spaces, quotes or backslashes.
fn systemd_word(s: &str) -> String {
    let s = s.replace('%', "%%");
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || "\"'\\;$".contains(c))
    {
        return s;
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A systemd unit running `exe --config config run` as `user`, restarted on
/// failure, with secrets from `<config dir>/contact-sync.env` (optional),
/// its data in `/var/lib/contact-sync` (the working directory, so the
/// default `data_dir` lands there) and a hardened sandbox. Paths must be
/// absolute; `user` a plain user name.
pub fn systemd_unit(exe: &Path, config: &Path, user: &str) -> Result<String, ServiceError> {
    let exe_s = path_text("executable", exe)?;
    let config_s = path_text("config file", config)?;
    let env = env_file_for(config);
    let env_s = path_text("environment file", &env)?;
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !user.starts_with('-');
    if !user_ok {
        return Err(invalid(
            "user",
            user,
            "use a plain user name (letters, digits, _ - .)",
        ));
    }
    Ok(format!(
        "\
# contact-sync daemon. Install: copy to /etc/systemd/system/contact-sync.service,
# then `systemctl daemon-reload && systemctl enable --now contact-sync`.
# Secrets (API keys, database passwords) go in {env_s} (mode 0600,
# owned by root), one NAME=value per line; never in this file.
[Unit]
Description=contact-sync: keeps contacts identical across stores
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
Group={user}
ExecStart={exe} --config {config} run
EnvironmentFile=-{env_file}
WorkingDirectory=/var/lib/contact-sync
StateDirectory=contact-sync
StateDirectoryMode=0700
UMask=0077
Restart=on-failure
RestartSec=10
# SIGTERM makes contact-sync finish the batch in flight, then exit.
KillSignal=SIGTERM
TimeoutStopSec=120
NoNewPrivileges=true
PrivateTmp=true
ProtectSystem=full
ProtectHome=read-only
ProtectKernelTunables=true
ProtectControlGroups=true
RestrictSUIDSGID=true

[Install]
WantedBy=multi-user.target
",
        exe = systemd_word(exe_s),
        config = systemd_word(config_s),
        env_file = systemd_word(env_s),
    ))
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A launchd property list (label `com.contact-sync`) running
/// `exe --config config run`, restarted when it exits with failure, with
/// secrets exported from `<config dir>/contact-sync.env` when present (a
/// `/bin/sh` wrapper; the paths are passed as arguments, never spliced into
/// the script) and logs in `<config dir>/contact-sync.log`.
pub fn launchd_plist(exe: &Path, config: &Path) -> Result<String, ServiceError> {
    let exe_s = path_text("executable", exe)?;
    let config_s = path_text("config file", config)?;
    let env = env_file_for(config);
    let env_s = path_text("environment file", &env)?;
    let dir = config.parent().unwrap_or(Path::new("/"));
    let dir_s = path_text("config directory", dir)?;
    let log = dir.join("contact-sync.log");
    let log_s = path_text("log file", &log)?;
    // $0 = env file, $1 = executable, $2 = config.
    let script = r#"if [ -f "$0" ]; then set -a; . "$0"; set +a; fi; exec "$1" --config "$2" run"#;
    let x = xml_escape;
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- contact-sync daemon. Install: copy to ~/Library/LaunchAgents/com.contact-sync.plist,
     then `launchctl load -w ~/Library/LaunchAgents/com.contact-sync.plist`.
     Secrets go in {env_c} (chmod 600), one NAME=value per line; never in this file. -->
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>com.contact-sync</string>
    <key>ProgramArguments</key>
    <array>
        <string>/bin/sh</string>
        <string>-c</string>
        <string>{script}</string>
        <string>{env}</string>
        <string>{exe}</string>
        <string>{config}</string>
    </array>
    <key>WorkingDirectory</key>
    <string>{dir}</string>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ThrottleInterval</key>
    <integer>10</integer>
    <key>ExitTimeOut</key>
    <integer>120</integer>
    <key>Umask</key>
    <integer>63</integer>
    <key>StandardOutPath</key>
    <string>{log}</string>
    <key>StandardErrorPath</key>
    <string>{log}</string>
</dict>
</plist>
"#,
        env_c = x(env_s).replace("--", "- -"),
        script = x(script),
        env = x(env_s),
        exe = x(exe_s),
        config = x(config_s),
        dir = x(dir_s),
        log = x(log_s),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_unit_runs_the_daemon_with_secrets_outside() {
        let unit = systemd_unit(
            Path::new("/usr/local/bin/contact-sync"),
            Path::new("/etc/contact-sync/config.toml"),
            "contact-sync",
        )
        .unwrap();
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/contact-sync --config /etc/contact-sync/config.toml run\n"
        ));
        assert!(unit.contains("Restart=on-failure\n"));
        assert!(unit.contains("EnvironmentFile=-/etc/contact-sync/contact-sync.env\n"));
        assert!(unit.contains("User=contact-sync\n"));
        assert!(!unit.contains("Environment="), "no inline environment");
    }

    #[test]
    fn systemd_quotes_odd_paths_and_refuses_injection() {
        let unit = systemd_unit(
            Path::new("/opt/my apps/contact-sync"),
            Path::new("/etc/cs/100%.toml"),
            "cs",
        )
        .unwrap();
        assert!(unit
            .contains("ExecStart=\"/opt/my apps/contact-sync\" --config /etc/cs/100%%.toml run\n"));
        assert!(systemd_unit(
            Path::new("/bin/x\nExecStartPre=/bin/evil"),
            Path::new("/etc/c.toml"),
            "cs"
        )
        .is_err());
        assert!(systemd_unit(Path::new("contact-sync"), Path::new("/etc/c.toml"), "cs").is_err());
        assert!(systemd_unit(Path::new("/bin/cs"), Path::new("/etc/c.toml"), "root\nx").is_err());
    }

    #[test]
    fn launchd_plist_restarts_on_failure_and_escapes() {
        let plist = launchd_plist(
            Path::new("/Applications/A&B/contact-sync"),
            Path::new("/Users/ann/.config/contact-sync/config.toml"),
        )
        .unwrap();
        assert!(plist.contains("<string>/Applications/A&amp;B/contact-sync</string>"));
        assert!(plist.contains("<key>SuccessfulExit</key>\n        <false/>"));
        assert!(plist.contains("<string>/Users/ann/.config/contact-sync/contact-sync.env</string>"));
        assert!(plist.contains("<string>/Users/ann/.config/contact-sync/config.toml</string>"));
        assert!(
            !plist.contains("EnvironmentVariables"),
            "no inline environment"
        );
    }
}
