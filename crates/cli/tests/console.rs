//! The operator console in a real headless browser (Chromium over
//! WebDriver, `chromedriver`), against a daemon this test starts on the
//! embedded default (canonical.db and local.db):
//!
//! - the overview lists the stores, and local as paused (a `DELETE FROM
//!   contacts` in local.db, which the mass-change guard holds back);
//! - a conflict the test records is settled by clicking "Keep incoming":
//!   it is no longer open in the state database and canonical holds the
//!   incoming value;
//! - a contact named `<script>alert(1)</script>` shows as text (no alert,
//!   no script element), in the contact view and in search;
//! - the paused store is approved from the page, and the decision is in
//!   the state database (then carried out: canonical loses the contacts);
//! - a contact with two open conflicts is settled per field (one kept
//!   canonical, one incoming): canonical holds the chosen values;
//! - a dead letter is retried and another dismissed by clicking: the state
//!   database shows them retried and dismissed;
//! - the overview carries its two charts (inline SVG);
//! - search finds contacts the initial sync copied (never journaled) by a
//!   part of their name and by email, and not one erased with `forget`.
//!
//! Screenshots of each page go to a temporary folder (its path is
//! printed), or to docs/screenshots/ (the README's images) with
//! `CONTACT_SYNC_UPDATE_SCREENSHOTS=1`.
//!
//! Chromium and chromedriver come from scripts/browser/setup.sh (Debian's
//! `chromium`, `chromium-driver`; scripts/test.sh runs it, and this test
//! runs it when they are missing). If they cannot be had, the test fails
//! under CI=true and is reported as ignored otherwise; it never passes
//! without a browser.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Trial};
use serde_json::{json, Value};

const XSS: &str = "<script>alert(1)</script>";

fn main() {
    let args = Arguments::from_args();
    let driver = chromedriver();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let trial = match driver {
        Ok(d) => Trial::test("console_in_a_real_browser", move || {
            console_in_a_real_browser(&d).map_err(Into::into)
        }),
        Err(why) if ci => Trial::test("console_in_a_real_browser", move || {
            Err(format!("no browser under CI: {why}").into())
        }),
        Err(why) => {
            eprintln!("console_in_a_real_browser: SKIPPED (ignored): {why}");
            Trial::test("console_in_a_real_browser", || Ok(())).with_ignored_flag(true)
        }
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}

/// chromedriver's path, installing Chromium with scripts/browser/setup.sh
/// when it is missing.
fn chromedriver() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("CONTACT_SYNC_CHROMEDRIVER") {
        if Path::new(&p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join("chromedriver");
        if p.exists() {
            return Ok(p);
        }
    }
    let script = repo().join("scripts/browser/setup.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let p = PathBuf::from("/usr/bin/chromedriver");
    p.exists()
        .then_some(p)
        .ok_or_else(|| "chromedriver is still missing after the set-up".to_string())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_contact-sync"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(dir)
        .args(args)
        .env_remove("CONTACT_SYNC_CONFIG")
        .output()
        .expect("run contact-sync")
}

fn ok(dir: &Path, args: &[&str]) {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn db(dir: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `cond` with a deadline; panics with `what` when it never holds.
async fn until<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills a child process when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal W3C WebDriver client (what the test needs of it).
struct Browser {
    http: reqwest::Client,
    base: String,
    /// Where screenshots go.
    shots: PathBuf,
}

/// docs/screenshots/ when `CONTACT_SYNC_UPDATE_SCREENSHOTS=1`, else a
/// folder under the system's temporary directory (the tracked images stay
/// as they are).
fn screenshot_dir() -> PathBuf {
    if std::env::var("CONTACT_SYNC_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        repo().join("docs/screenshots")
    } else {
        std::env::temp_dir().join(format!("contact-sync-screenshots-{}", std::process::id()))
    }
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("WebDriver request");
        let v: Value = resp.json().await.expect("WebDriver JSON");
        if let Some(err) = v["value"].get("error") {
            panic!("WebDriver {path}: {err} {}", v["value"]["message"]);
        }
        v["value"].clone()
    }
    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }
    async fn url(&self) -> String {
        self.get("/url")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    async fn find(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element id for {css}: {v}"))
            .to_string()
    }
    async fn count(&self, css: &str) -> usize {
        self.post(
            "/elements",
            json!({ "using": "css selector", "value": css }),
        )
        .await
        .as_array()
        .map_or(0, |a| a.len())
    }
    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.get(&format!("/element/{id}/text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }
    /// Whether a JavaScript dialog (alert) is open.
    async fn alert_open(&self) -> bool {
        let resp = self
            .http
            .get(format!("{}/alert/text", self.base))
            .send()
            .await
            .expect("WebDriver request");
        let v: Value = resp.json().await.expect("WebDriver JSON");
        v["value"].get("error").is_none()
    }
    /// After a form's submit: waits for the page it leads to and returns
    /// its `#flash` message; panics with the error page's text.
    async fn flash(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(150);
        loop {
            if self.count("#flash").await == 1 {
                return self.text("#flash").await;
            }
            if self.count("p.err").await > 0 {
                panic!("the action failed: {}", self.text("p.err").await);
            }
            assert!(Instant::now() < deadline, "no page after the submit");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    async fn screenshot(&self, name: &str) {
        let b64 = self.get("/screenshot").await;
        let png = base64_decode(b64.as_str().expect("screenshot data"));
        std::fs::create_dir_all(&self.shots).unwrap();
        std::fs::write(self.shots.join(name), png).unwrap();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn console_in_a_real_browser(driver: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(scenario(driver));
    Ok(())
}

async fn scenario(driver: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "300"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    // Two contacts only the initial sync copied (no journal entry): one to
    // find, one erased with `forget` (not to be found).
    let seeded = |offset: i64| -> (String, String, String) {
        let (id, name, emails): (String, String, String) = db(d, "canonical.db")
            .query_row(
                "SELECT contact_id, canonical_name, emails FROM contacts ORDER BY contact_id LIMIT 1 OFFSET ?1",
                [offset],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let emails: Value = serde_json::from_str(&emails).unwrap();
        let email = emails[0]["address"]
            .as_str()
            .expect("a seeded email")
            .to_string();
        (id, name, email)
    };
    let (found_id, found_name, found_email) = seeded(10);
    let (gone_id, _, gone_email) = seeded(11);
    let journaled: i64 = db(d, "state.db")
        .query_row(
            "SELECT count(*) FROM journal WHERE contact_id IN (?1, ?2)",
            [&found_id, &gone_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(journaled, 0, "the initial sync journals nothing");
    ok(d, &["forget", &gone_id]);

    // The XSS probe: a contact renamed in canonical (captured and
    // journaled by the daemon's first cycle).
    let probe: String = db(d, "canonical.db")
        .query_row(
            "SELECT contact_id FROM contacts ORDER BY contact_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db(d, "canonical.db")
        .execute(
            "UPDATE contacts SET canonical_name = ?1, display_name = ?1, version = version + 1 WHERE contact_id = ?2",
            rusqlite::params![XSS, probe],
        )
        .unwrap();
    // A conflict on another contact, as the merge records an open one.
    let other: String = db(d, "canonical.db")
        .query_row(
            "SELECT contact_id FROM contacts ORDER BY contact_id LIMIT 1 OFFSET 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let conflict_id: i64 = {
        let s = db(d, "state.db");
        s.execute(
            "INSERT INTO conflicts (contact_id, store, field, base, canonical, incoming,
                 canonical_version, incoming_version, resolution, status, created_at)
             VALUES (?1, 'local', 'job_title', 'null', '\"Canonical title\"', '\"Incoming title\"',
                 1, 1, 'open', 'open', '2026-01-01T00:00:00.000000Z')",
            [&other],
        )
        .unwrap();
        s.last_insert_rowid()
    };
    // A contact with two open conflicts, settled per field: canonical holds
    // "Canon org" / "Canon dept" (edited there, captured by the daemon).
    let third: String = db(d, "canonical.db")
        .query_row(
            "SELECT contact_id FROM contacts ORDER BY contact_id LIMIT 1 OFFSET 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db(d, "canonical.db")
        .execute(
            "UPDATE contacts SET organization = 'Canon org', department = 'Canon dept', version = version + 1 WHERE contact_id = ?1",
            [&third],
        )
        .unwrap();
    let field_conflict = |field: &str, canonical: &str, incoming: &str| -> i64 {
        let s = db(d, "state.db");
        s.execute(
            "INSERT INTO conflicts (contact_id, store, field, base, canonical, incoming,
                 canonical_version, incoming_version, resolution, status, created_at)
             VALUES (?1, 'local', ?2, 'null', ?3, ?4, 1, 1, 'open', 'open', '2026-01-01T00:00:00.000000Z')",
            rusqlite::params![third, field, json!(canonical).to_string(), json!(incoming).to_string()],
        )
        .unwrap();
        s.last_insert_rowid()
    };
    let org_conflict = field_conflict("organization", "Canon org", "Incoming org");
    let dept_conflict = field_conflict("department", "Canon dept", "Incoming dept");
    // Two dead letters to retry and dismiss from the page.
    let fourth: String = db(d, "canonical.db")
        .query_row(
            "SELECT contact_id FROM contacts ORDER BY contact_id LIMIT 1 OFFSET 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let dead_letter = |record: &str, field: &str, reason: &str| -> i64 {
        let s = db(d, "state.db");
        s.execute(
            "INSERT INTO dead_letters (store, record, field, reason, payload, at)
             VALUES ('local', ?1, ?2, ?3, NULL, '2026-01-02T00:00:00.000000Z')",
            [record, field, reason],
        )
        .unwrap();
        s.last_insert_rowid()
    };
    let to_retry = dead_letter(&fourth, "phones", "invalid phone \"12\"");
    let to_dismiss = dead_letter("row-9", "emails", "invalid email \"a@\"");
    // A dead letter with the probe in its reason (the page shows it as text).
    db(d, "state.db")
        .execute(
            "INSERT INTO dead_letters (store, record, field, reason, payload, at)
             VALUES ('local', 'row-7', 'emails', ?1, NULL, '2026-01-01T00:00:00.000000Z')",
            [format!("invalid email {XSS:?}")],
        )
        .unwrap();
    // A mass delete in local: the guard pauses local.
    db(d, "local.db")
        .execute("DELETE FROM contacts", [])
        .unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _daemon = Proc(
        Command::new(bin())
            .current_dir(d)
            .args([
                "run",
                "--interval",
                "1",
                "--http-listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env_remove("CONTACT_SYNC_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon"),
    );
    let http = reqwest::Client::new();
    until("the daemon's console", 60, || {
        let (http, url) = (http.clone(), format!("{base}/api/paused"));
        async move {
            match http.get(url).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v.as_array().is_some_and(|a| !a.is_empty())),
                Err(_) => false,
            }
        }
    })
    .await;

    let dport = free_port();
    let _driver = Proc(
        Command::new(driver)
            .arg(format!("--port={dport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let wd = format!("http://127.0.0.1:{dport}");
    until("chromedriver", 30, || {
        let (http, url) = (http.clone(), format!("{wd}/status"));
        async move {
            match http.get(url).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        }
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let chromium = std::env::var("CONTACT_SYNC_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let session: Value = http
        .post(format!("{wd}/session"))
        .json(&json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        } } }))
        .send()
        .await
        .expect("new session")
        .json()
        .await
        .expect("session JSON");
    let sid = session["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {session}"))
        .to_string();
    let b = Browser {
        http: http.clone(),
        base: format!("{wd}/session/{sid}"),
        shots: screenshot_dir(),
    };
    eprintln!("screenshots: {}", b.shots.display());

    // Overview: every store listed; local paused and why.
    b.goto(&format!("{base}/")).await;
    let stores = b.text("#stores").await;
    assert!(stores.contains("canonical"), "{stores}");
    let local = b.text("tr[data-store=local]").await;
    assert!(local.contains("paused"), "{local}");
    assert!(local.contains("299 deletes"), "{local}"); // 300 seeded, 1 erased
    assert_eq!(b.text("#conflicts-open").await, "3");
    let alerts = b.text("#alerts").await;
    assert!(alerts.contains("store local is paused"), "{alerts}");
    // The charts: inline SVG, a line per store (the initial sync and the
    // daemon's cycles are in the run history).
    assert_eq!(b.count("#chart-changes svg").await, 1);
    assert_eq!(b.count("#chart-lag svg").await, 1);
    assert!(b.text("#chart-changes").await.contains("canonical"));
    b.screenshot("overview.png").await;
    b.goto(&format!("{base}/#chart-changes")).await;
    b.screenshot("overview-charts.png").await;

    // The contact view and search show the probe as text.
    b.goto(&format!("{base}/contact/{probe}")).await;
    until("the probe in canonical", 30, || async {
        b.goto(&format!("{base}/contact/{probe}")).await;
        b.text("#side-by-side").await.contains(XSS)
    })
    .await;
    assert!(!b.alert_open().await, "a script ran");
    assert_eq!(b.count("main script").await, 0);
    b.screenshot("contact.png").await;
    until("the probe in the journal", 30, || async {
        b.goto(&format!("{base}/search")).await;
        b.type_into("main input[name=q]", "alert(1)").await;
        b.click("main button[type=submit]").await;
        b.count("#results").await == 1
    })
    .await;
    assert!(b.text("#results td.name").await.contains(XSS));
    assert!(!b.alert_open().await, "a script ran");
    assert!(!b.url().await.contains("alert"), "the query is in the URL");
    b.screenshot("search.png").await;
    // Contacts never journaled: by a part of the name (each word cut
    // short) and by email; the erased one is not found by its email.
    let part: String = found_name
        .split_whitespace()
        .map(|w| w.chars().take(4).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ");
    let search = |q: String| {
        let b = &b;
        let base = &base;
        async move {
            b.goto(&format!("{base}/search")).await;
            b.type_into("main input[name=q]", &q).await;
            b.click("main button[type=submit]").await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while b.count("#results").await + b.count("#empty").await == 0 {
                assert!(Instant::now() < deadline, "no results page for {q:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if b.count("#results").await == 1 {
                b.text("#results").await
            } else {
                String::new()
            }
        }
    };
    let by_name = search(part.clone()).await;
    assert!(by_name.contains(&found_id), "{part:?} → {by_name}");
    b.screenshot("search-name.png").await;
    let by_email = search(found_email.clone()).await;
    assert!(by_email.contains(&found_id), "{found_email} → {by_email}");
    assert!(by_email.contains(&found_name), "{by_email}");
    let erased = search(gone_email.clone()).await;
    assert!(!erased.contains(&gone_id), "erased, yet found: {erased}");
    assert!(!b.url().await.contains('@'), "the query is in the URL");

    b.goto(&format!("{base}/dead-letters")).await;
    assert!(b.text("#dead-letters").await.contains(XSS));
    assert!(!b.alert_open().await, "a script ran");
    b.screenshot("dead-letters.png").await;

    // The conflict, settled by a click.
    b.goto(&format!("{base}/conflicts")).await;
    let row = b.text(&format!("#conflict-{conflict_id}")).await;
    assert!(
        row.contains("Canonical title") && row.contains("Incoming title"),
        "{row}"
    );
    b.screenshot("conflicts.png").await;
    b.click(&format!("#keep-incoming-{conflict_id}")).await;
    // Settled by the daemon's loop between cycles: wait for the answer page.
    let flash = b.flash().await;
    assert!(
        flash.contains(&format!("Conflict {conflict_id} settled")),
        "{flash}"
    );
    let status: String = db(d, "state.db")
        .query_row(
            "SELECT status FROM conflicts WHERE id = ?1",
            [conflict_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "kept_incoming");
    let title: Option<String> = db(d, "canonical.db")
        .query_row(
            "SELECT job_title FROM contacts WHERE contact_id = ?1",
            [&other],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(title.as_deref(), Some("Incoming title"));

    // The two-field conflict, settled per field: organization kept
    // canonical, department incoming, in one submit.
    b.goto(&format!("{base}/contact/{third}/conflicts")).await;
    assert_eq!(b.count("#field-conflicts tbody tr").await, 2);
    b.click(&format!("#choose-canonical-{org_conflict}")).await;
    b.click(&format!("#choose-incoming-{dept_conflict}")).await;
    b.screenshot("conflict-fields.png").await;
    b.click("#settle-fields").await;
    let flash = b.flash().await;
    assert!(
        flash.contains("organization: kept canonical")
            && flash.contains("department: kept incoming"),
        "{flash}"
    );
    let status = |id: i64| -> String {
        db(d, "state.db")
            .query_row("SELECT status FROM conflicts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(status(org_conflict), "kept_canonical");
    assert_eq!(status(dept_conflict), "kept_incoming");
    let open: i64 = db(d, "state.db")
        .query_row(
            "SELECT count(*) FROM conflicts WHERE status = 'open'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);
    let (org, dept): (Option<String>, Option<String>) = db(d, "canonical.db")
        .query_row(
            "SELECT organization, department FROM contacts WHERE contact_id = ?1",
            [&third],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (org.as_deref(), dept.as_deref()),
        (Some("Canon org"), Some("Incoming dept"))
    );

    // The paused store, approved from the page.
    b.goto(&format!("{base}/paused")).await;
    assert!(b.text("#paused-local").await.contains("mass_change"));
    b.screenshot("paused.png").await;
    b.click("#approve-local").await;
    let flash = b.flash().await;
    assert!(flash.contains("local"), "{flash}");
    let decided: Option<String> = db(d, "state.db")
        .query_row(
            "SELECT decision FROM paused_stores WHERE store = 'local'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(Some("carried out".into()));
    assert!(
        matches!(decided.as_deref(), Some("approve" | "carried out")),
        "{decided:?}"
    );
    // The daemon carries it out: local is no longer paused and canonical
    // has the deletes (but for the contacts edited in canonical after the
    // delete, where the edit and the delete conflict).
    until("the approval carried out", 60, || async {
        let paused: i64 = db(d, "state.db")
            .query_row("SELECT count(*) FROM paused_stores", [], |r| r.get(0))
            .unwrap();
        let live: i64 = db(d, "canonical.db")
            .query_row(
                "SELECT count(*) FROM contacts WHERE deleted_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        paused == 0 && live <= 3
    })
    .await;

    // Dead letters: one retried, one dismissed, by clicking.
    b.goto(&format!("{base}/dead-letters")).await;
    b.click(&format!("#retry-{to_retry}")).await;
    let flash = b.flash().await;
    assert!(
        flash.contains(&format!("Dead letter {to_retry} retried")),
        "{flash}"
    );
    // (A fresh page: the flash above must not answer for the next click.)
    b.goto(&format!("{base}/dead-letters")).await;
    b.click(&format!("#dismiss-{to_dismiss}")).await;
    let flash = b.flash().await;
    assert!(
        flash.contains(&format!("Dead letter {to_dismiss} dismissed")),
        "{flash}"
    );
    b.screenshot("dead-letters-closed.png").await;
    let dl_status = |id: i64| -> String {
        db(d, "state.db")
            .query_row("SELECT status FROM dead_letters WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(dl_status(to_retry), "retried");
    assert_eq!(dl_status(to_dismiss), "dismissed");
    // Closed ones have no buttons any more.
    assert_eq!(b.count(&format!("#retry-{to_retry}")).await, 0);
    assert_eq!(b.count(&format!("#dismiss-{to_dismiss}")).await, 0);

    // A form without the CSRF token is refused.
    let r = http
        .post(format!("{base}/paused/local/decide"))
        .form(&[("csrf", "wrong"), ("decision", "approve")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let _ = http.delete(format!("{wd}/session/{sid}")).send().await;
}
