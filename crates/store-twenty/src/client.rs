//! The HTTP client: Twenty's two rate-limit windows kept with `governor`,
//! 429 handling (back off with `backon`'s jittered exponential delays and
//! resume; never fail because of the limit), bounded retries of transient
//! failures, and progress counters.
//!
//! # Why one request per period and no burst
//! Twenty 2.21 throttles API keys per workspace with two token buckets,
//! 100 per 60 s and 100 per 1 s by default (issue 13, observation 5), whose
//! refill is `floor(elapsed × rate)` counted from the last *admitted*
//! request (`ThrottlerService.getAvailableTokensCount` in twenty-server):
//! requests closer together than `window / limit` refill nothing, so a
//! client that bursts and relies on a steady refill (what a token bucket or
//! a GCRA with a burst assumes) overshoots; the live run sent 173 requests
//! in its first minute and 85 were 429s. Requests spaced by at least
//! `window / limit` (plus a small margin) each find a refilled token, so
//! the limiter here is a GCRA without burst for each window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use contact_sync_connector::StoreError;
use contact_sync_core::clock::ClockSkew;
use contact_sync_core::model::now;
use contact_sync_core::Timestamp;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use serde_json::Value;

use crate::config::TwentyConfig;

/// Attempts for a request that fails transiently (5xx, network).
const TRANSIENT_ATTEMPTS: u32 = 6;
/// A run of 429s longer than this gives up with a transient error (the
/// engine retries the batch later); far beyond any sane limit window.
const MAX_RATE_LIMITED_WAIT: Duration = Duration::from_secs(30 * 60);

/// Progress and health counters of the Twenty client, shared by clones.
#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
    pub throttle_wait_ms: AtomicU64,
    pub records_written: AtomicU64,
    pub records_read: AtomicU64,
    pub webhooks_accepted: AtomicU64,
    pub webhooks_rejected: AtomicU64,
}

/// A snapshot of the store's counters (progress of a long sync, 429s seen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TwentyStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Responses 429 received (each was waited out and retried).
    pub rate_limited: u64,
    /// Requests retried after a transient failure or a 429.
    pub retries: u64,
    /// Time spent waiting for the token bucket or after a 429, in ms.
    pub throttle_wait_ms: u64,
    /// Records written (created, updated, deleted).
    pub records_written: u64,
    /// Records read (pages of people, webhooks decoded).
    pub records_read: u64,
    /// Webhooks verified and queued.
    pub webhooks_accepted: u64,
    /// Webhooks rejected (signature, timestamp, nonce, size, body).
    pub webhooks_rejected: u64,
}

impl StatsInner {
    pub fn snapshot(&self) -> TwentyStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TwentyStats {
            requests: g(&self.requests),
            rate_limited: g(&self.rate_limited),
            retries: g(&self.retries),
            throttle_wait_ms: g(&self.throttle_wait_ms),
            records_written: g(&self.records_written),
            records_read: g(&self.records_read),
            webhooks_accepted: g(&self.webhooks_accepted),
            webhooks_rejected: g(&self.webhooks_rejected),
        }
    }
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// The spacing that never outruns a Twenty bucket of `limit` per
/// `window`: `window / limit`, 2 % + 2 ms slower for the two clocks'
/// jitter (see the module docs).
pub(crate) fn spacing(limit: u32, window: Duration) -> Duration {
    let per = window / limit.max(1);
    per + per / 50 + Duration::from_millis(2)
}

fn limiter(limit: u32, window: Duration) -> DefaultDirectRateLimiter {
    let per = spacing(limit, window);
    let quota = Quota::with_period(per)
        .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
        .allow_burst(std::num::NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

/// A response that was not an auth failure or 429.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    /// When the request that got this answer went out and when the answer
    /// came back (this machine's clock), and the answer's `Date` header.
    pub timing: Timing,
}

/// The round trip of one request, for measuring the server's clock.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub sent: Timestamp,
    pub received: Timestamp,
    /// The `Date` header, as sent.
    pub date: Option<String>,
}

impl Timing {
    /// The server's clock against this machine's, from the `Date` header
    /// (whole seconds) and the round trip; `None` without a readable
    /// header.
    pub fn clock_skew(&self) -> Option<ClockSkew> {
        let date = chrono::DateTime::parse_from_rfc2822(self.date.as_deref()?.trim()).ok()?;
        Some(ClockSkew::measure(
            date.with_timezone(&chrono::Utc),
            chrono::TimeDelta::seconds(1),
            self.sent,
            self.received,
        ))
    }
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// Twenty's error text (`messages` joined), for error messages.
    pub fn message(&self) -> String {
        match self.body.get("messages").and_then(Value::as_array) {
            Some(m) => m
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; "),
            None => {
                let s = self.body.to_string();
                s.chars().take(300).collect()
            }
        }
    }
    pub fn is_duplicate(&self) -> bool {
        self.status == 400 && self.message().to_lowercase().contains("duplicate")
    }
}

/// The HTTP client of one workspace.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    auth: String,
    store: String,
    /// Twenty's long window (`requests_per_minute` per `rate_window`).
    long: Arc<DefaultDirectRateLimiter>,
    /// Twenty's short window (`requests_per_second_window` per
    /// `short_rate_window`).
    short: Arc<DefaultDirectRateLimiter>,
    unit: Duration,
    pub stats: Arc<StatsInner>,
}

impl Client {
    pub fn new(cfg: &TwentyConfig) -> Result<Client, StoreError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .build()
            .map_err(|e| {
                StoreError::permanent(&cfg.name, format!("building the HTTP client: {e}"))
            })?;
        let long = spacing(cfg.requests_per_minute, cfg.rate_window);
        let short = spacing(cfg.requests_per_short_window, cfg.short_rate_window);
        Ok(Client {
            http,
            base: cfg.base().to_string(),
            auth: format!("Bearer {}", cfg.api_key.expose()),
            store: cfg.name.clone(),
            long: Arc::new(limiter(cfg.requests_per_minute, cfg.rate_window)),
            short: Arc::new(limiter(
                cfg.requests_per_short_window,
                cfg.short_rate_window,
            )),
            unit: long.max(short),
            stats: Arc::new(StatsInner::default()),
        })
    }

    /// Waits until both windows admit a request.
    async fn acquire(&self) {
        let t0 = Instant::now();
        self.long.until_ready().await;
        self.short.until_ready().await;
        let waited = t0.elapsed();
        if waited >= Duration::from_millis(1) {
            StatsInner::add(&self.stats.throttle_wait_ms, waited.as_millis() as u64);
        }
    }

    /// Delays between tries: jittered exponential from one limiter period
    /// (at least 10 ms) up to 30 s.
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.unit.max(Duration::from_millis(10)))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Sends a request (path with query, e.g. `/rest/people?limit=1`),
    /// rate limited and retried. `Ok` holds any reply other than 2xx
    /// success, 401/403 and 429 as a [`Reply`] for the caller to judge;
    /// 401/403 are permanent errors; transient failures that persist are
    /// transient errors. Error text never holds the API key.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, StoreError> {
        let url = format!("{}{}", self.base, path);
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut transient = 0u32;
        let mut limited = self.backoff();
        let mut retry = self.backoff();
        let started = Instant::now();
        loop {
            self.acquire().await;
            StatsInner::add(&self.stats.requests, 1);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Authorization", &self.auth)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let sent = now();
            let failure = match req.send().await {
                Ok(resp) => {
                    let timing = Timing {
                        sent,
                        received: now(),
                        date: resp
                            .headers()
                            .get(reqwest::header::DATE)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                    };
                    let status = resp.status().as_u16();
                    let bytes = resp.bytes().await;
                    match bytes {
                        Ok(bytes) => {
                            let body: Value = if bytes.is_empty() {
                                Value::Null
                            } else {
                                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                                    Value::String(
                                        String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                                    )
                                })
                            };
                            let reply = Reply {
                                status,
                                body,
                                timing,
                            };
                            match status {
                                429 => {
                                    StatsInner::add(&self.stats.rate_limited, 1);
                                    StatsInner::add(&self.stats.retries, 1);
                                    if started.elapsed() > MAX_RATE_LIMITED_WAIT {
                                        return Err(StoreError::transient(
                                            &self.store,
                                            format!("{what}: still rate limited (429) after {:?}", started.elapsed()),
                                        ));
                                    }
                                    // Twenty's 429 has no Retry-After.
                                    let wait = limited.next().unwrap_or(Duration::from_secs(30));
                                    tracing::debug!(store = %self.store, request = %what, wait_ms = wait.as_millis() as u64, "rate limited (429); backing off");
                                    StatsInner::add(&self.stats.throttle_wait_ms, wait.as_millis() as u64);
                                    tokio::time::sleep(wait).await;
                                    continue;
                                }
                                401 | 403 => {
                                    return Err(StoreError::permanent(
                                        &self.store,
                                        format!("{what}: authentication failed ({status} {}); check the API key", reply.message()),
                                    ))
                                }
                                500..=599 => format!("{what}: server error {status}: {}", reply.message()),
                                _ => return Ok(reply),
                            }
                        }
                        Err(e) => format!("{what}: reading the response: {e}"),
                    }
                }
                Err(e) => format!("{what}: {}", describe(&e)),
            };
            transient += 1;
            if transient >= TRANSIENT_ATTEMPTS {
                return Err(StoreError::transient(&self.store, failure));
            }
            StatsInner::add(&self.stats.retries, 1);
            let wait = retry.next().unwrap_or(Duration::from_secs(30));
            tracing::debug!(store = %self.store, error = %failure, wait_ms = wait.as_millis() as u64, "transient failure; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Like [`send`](Self::send) but any non-2xx reply is an error
    /// (4xx permanent) naming `context`.
    pub async fn send_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        context: &str,
    ) -> Result<Value, StoreError> {
        let r = self.send(method, path, body).await?;
        if r.ok() {
            Ok(r.body)
        } else {
            Err(StoreError::permanent(
                &self.store,
                format!("{context}: HTTP {}: {}", r.status, r.message()),
            ))
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display holds the URL (no secrets in our URLs) and the kind.
    if e.is_timeout() {
        format!("timed out ({e})")
    } else if e.is_connect() {
        format!("cannot connect ({e})")
    } else {
        e.to_string()
    }
}

/// Percent-encodes a query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone, Utc};

    fn timing(date: Option<&str>, sent_ms: i64, received_ms: i64) -> Timing {
        let at = |ms| Utc.timestamp_millis_opt(ms).unwrap();
        Timing {
            sent: at(sent_ms),
            received: at(received_ms),
            date: date.map(str::to_string),
        }
    }

    #[test]
    fn the_date_header_is_read_against_the_round_trip() {
        // 1994-11-06T08:49:37Z, sent 2 s later by this machine's clock.
        let t0 = 784_111_777_000;
        let s = timing(
            Some("Sun, 06 Nov 1994 08:49:37 GMT"),
            t0 + 2_000,
            t0 + 2_100,
        )
        .clock_skew()
        .unwrap();
        assert_eq!(s.offset, TimeDelta::milliseconds(-1_550));
        assert_eq!(s.uncertainty, TimeDelta::milliseconds(550));
    }

    #[test]
    fn no_or_unreadable_date_header_is_no_reading() {
        assert_eq!(timing(None, 0, 1).clock_skew(), None);
        assert_eq!(timing(Some("yesterday"), 0, 1).clock_skew(), None);
    }
}
