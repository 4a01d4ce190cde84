//! Configuration of the Twenty store.

use std::time::Duration;

/// A secret string (API key, webhook secret). `Debug` and `Display` print
/// `***`, so it can sit in config structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: pass it only to the code that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Largest batch Twenty accepts in one `POST /rest/batch/people` (and the
/// largest page it returns).
pub const MAX_BATCH: usize = 200;

/// How to reach one Twenty workspace and how hard to push it.
#[derive(Debug, Clone)]
pub struct TwentyConfig {
    /// Store name in config, logs and the state database (`twenty`). Also the
    /// namespace of the deterministic person ids
    /// (`identity::store_uuid(name, contact_id)`): do not change it once
    /// records are written.
    pub name: String,
    /// `https://crm.example.com` (no trailing `/rest`).
    pub base_url: String,
    /// API key (a JWT), sent as `Authorization: Bearer …`.
    pub api_key: Secret,
    /// Records per batch create (default 200, what Twenty 2.21 accepts).
    pub batch_size: usize,
    /// Requests allowed per [`rate_window`](Self::rate_window) (Twenty's
    /// default: 100 per minute per workspace).
    pub requests_per_minute: u32,
    /// The window of the rate limit: 60 s in production; tests and benches
    /// scale it down to match a fake's short window.
    pub rate_window: Duration,
    /// Requests allowed per [`short_rate_window`](Self::short_rate_window)
    /// (Twenty's default: 100 per second per workspace).
    pub requests_per_short_window: u32,
    /// Twenty's short window (1 s).
    pub short_rate_window: Duration,
    /// How often polling lists every person id to notice people destroyed
    /// in Twenty (a destroyed person never appears in the `updatedAt`
    /// poll). `Duration::ZERO`: every poll.
    pub destroy_sweep_every: Duration,
    /// Push category X (Exclude) contacts too (default false: they are left
    /// out, and soft-deleted in Twenty when a contact becomes X).
    pub include_excluded: bool,
    /// Secret shared with Twenty's webhook (checks
    /// `X-Twenty-Webhook-Signature`); `None` disables the receiver.
    pub webhook_secret: Option<Secret>,
    /// Public URL of the daemon's `/webhooks/twenty`, registered by
    /// `migrate` when set.
    pub webhook_url: Option<String>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl TwentyConfig {
    /// A config with the defaults (batch 200, 100 requests per minute and
    /// 100 per second).
    pub fn new(base_url: impl Into<String>, api_key: Secret) -> Self {
        TwentyConfig {
            name: "twenty".into(),
            base_url: base_url.into(),
            api_key,
            batch_size: MAX_BATCH,
            requests_per_minute: 100,
            rate_window: Duration::from_secs(60),
            requests_per_short_window: 100,
            short_rate_window: Duration::from_secs(1),
            destroy_sweep_every: Duration::from_secs(600),
            include_excluded: false,
            webhook_secret: None,
            webhook_url: None,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the values; the message names the bad setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("twenty: `name` must not be empty".into());
        }
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "{}: `base_url` must start with http:// or https://, got {:?}",
                self.name, self.base_url
            ));
        }
        if self.api_key.is_empty() {
            return Err(format!("{}: `api_key` is empty", self.name));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(format!(
                "{}: `batch_size` must be 1..={MAX_BATCH}, got {}",
                self.name, self.batch_size
            ));
        }
        if self.requests_per_minute == 0 {
            return Err(format!(
                "{}: `requests_per_minute` must be at least 1",
                self.name
            ));
        }
        if self.webhook_secret.as_ref().is_some_and(Secret::is_empty) {
            return Err(format!("{}: `webhook_secret` is set but empty", self.name));
        }
        if self.requests_per_short_window == 0 || self.short_rate_window.is_zero() {
            return Err(format!(
                "{}: `requests_per_short_window` and `short_rate_window` must be positive",
                self.name
            ));
        }
        if self.rate_window.is_zero() {
            return Err(format!("{}: `rate_window` must be positive", self.name));
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let mut c = TwentyConfig::new("http://127.0.0.1:1", Secret::new("jwt-super-secret"));
        c.webhook_secret = Some(Secret::new("hook-secret"));
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("jwt-super-secret") && !dbg.contains("hook-secret"),
            "{dbg}"
        );
        assert!(c.validate().is_ok());
        c.batch_size = 201;
        assert!(c.validate().unwrap_err().contains("batch_size"));
    }
}
