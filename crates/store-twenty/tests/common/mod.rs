//! Test target selection: a live Twenty when `TWENTY_BASE_URL` and
//! `TWENTY_API_KEY` are set, else the fake on loopback.
#![allow(dead_code)]

use std::time::Duration;

use contact_sync_core::synth::Generator;
use contact_sync_core::{content_hash, Contact};
use contact_sync_twenty::{Secret, TwentyConfig, TwentyStore};
use contact_sync_twenty_fake::{FakeConfig, FakeTwenty};
use serde_json::Value;

pub struct Target {
    pub base_url: String,
    pub api_key: String,
    /// `None` against a live Twenty.
    pub fake: Option<FakeTwenty>,
    /// Distinguishes this run's records on a shared live workspace.
    pub run: String,
}

pub fn live() -> Option<(String, String)> {
    match (
        std::env::var("TWENTY_BASE_URL"),
        std::env::var("TWENTY_API_KEY"),
    ) {
        (Ok(u), Ok(k)) if !u.is_empty() && !k.is_empty() => Some((u, k)),
        _ => None,
    }
}

pub async fn target(cfg: FakeConfig) -> Target {
    let run = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    match live() {
        Some((base_url, api_key)) => Target {
            base_url,
            api_key,
            fake: None,
            run,
        },
        None => {
            let fake = FakeTwenty::start(cfg).await.expect("start the fake Twenty");
            Target {
                base_url: fake.base_url(),
                api_key: fake.api_key().to_string(),
                fake: Some(fake),
                run,
            }
        }
    }
}

impl Target {
    pub fn config(&self) -> TwentyConfig {
        let mut c = TwentyConfig::new(&self.base_url, Secret::new(&self.api_key));
        if self.fake.is_some() {
            // The fake has no limit unless a test sets one.
            c.requests_per_minute = 100_000;
        }
        c
    }

    pub fn store(&self) -> TwentyStore {
        TwentyStore::new(self.config()).expect("valid config")
    }

    pub fn fake(&self) -> &FakeTwenty {
        self.fake.as_ref().expect("fake-only check")
    }

    /// A contact id unique to this run.
    pub fn cid(&self, n: u64) -> String {
        format!("{}-{n:05}", self.run)
    }

    /// Synthetic contacts with this run's ids and emails (category X left
    /// out), normalized.
    pub fn contacts(&self, n: usize) -> Vec<Contact> {
        let mut g = Generator::new(7);
        let mut out = Vec::with_capacity(n);
        let mut i = 0u64;
        while out.len() < n {
            let mut c = g.contact(i);
            i += 1;
            if c.category_code.as_deref() == Some("X") {
                continue;
            }
            c.contact_id = self.cid(i);
            for e in &mut c.emails {
                e.address = format!("{}.{}", self.run, e.address);
            }
            empty_json_is_absent(&mut c);
            c.normalize();
            out.push(c);
        }
        out
    }

    pub fn http(&self) -> Http {
        Http {
            base: self.base_url.clone(),
            key: self.api_key.clone(),
            c: reqwest::Client::new(),
            retry_429: self.fake.is_none(),
        }
    }
}

pub fn hash(c: &Contact) -> String {
    let mut c = c.clone();
    c.normalize();
    content_hash(&c)
}

/// Direct HTTP to Twenty, as a user or another tool would.
pub struct Http {
    pub base: String,
    pub key: String,
    pub c: reqwest::Client,
    /// Against a live Twenty, a 429 (no Retry-After) is waited out and the
    /// request repeated; against the fake, tests see every answer.
    pub retry_429: bool,
}

impl Http {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        auth: Option<&str>,
    ) -> (u16, Value) {
        let mut wait = Duration::from_millis(700);
        for attempt in 0.. {
            let mut r = self
                .c
                .request(method.clone(), format!("{}{}", self.base, path));
            if let Some(a) = auth {
                r = r.header("Authorization", format!("Bearer {a}"));
            }
            if let Some(b) = &body {
                r = r.json(b);
            }
            let resp = r.send().await.expect("request");
            let status = resp.status().as_u16();
            if status == 429 && self.retry_429 && attempt < 30 {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
                continue;
            }
            let text = resp.text().await.expect("body");
            return (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            );
        }
        unreachable!("the loop returns")
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let key = self.key.clone();
        self.call(method, path, body, Some(&key)).await
    }
}

/// A recorded answer of live Twenty (`tests/samples/<name>`).
pub fn sample(name: &str) -> Value {
    let path = format!("{}/tests/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Waits (bounded) until `f` holds; panics with `what` otherwise.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

/// Twenty stores a RAW_JSON `[]`/`{}` as null (issue 13, observation 3), so
/// it reads back absent. Core is to make empty JSON one value (absent);
/// until it does, tests write what core will hold.
pub fn empty_json_is_absent(c: &mut Contact) {
    for v in [
        &mut c.llm_context,
        &mut c.relationships,
        &mut c.communication_stats,
        &mut c.social_profiles,
        &mut c.custom_attributes,
    ] {
        let empty = match v {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            *v = None;
        }
    }
}
