//! End to end through the binary with Twenty: the embedded canonical store,
//! the local SQLite store and the stateful fake Twenty on loopback (real
//! HTTP, rate limit and the workflow that edits new people a second later).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use contact_sync_twenty_fake::{FakeConfig, FakeTwenty, RateLimit};
use serde_json::Value;

fn run(dir: &Path, args: &[&str], key: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(dir)
        .args(["--config", "contact-sync.toml"])
        .args(args)
        .env("TEST_TWENTY_KEY", key)
        .output()
        .expect("run contact-sync")
}

fn ok(dir: &Path, args: &[&str], key: &str) -> String {
    let out = run(dir, args, key);
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn writes(fake: &FakeTwenty) -> u64 {
    fake.counters()
        .by_route
        .iter()
        .filter(|(k, _)| k.contains("people") && !k.starts_with("GET"))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_reach_twenty_and_edits_in_twenty_come_back() {
    let fake = FakeTwenty::start(FakeConfig {
        rate_limit: Some(RateLimit {
            requests: 40,
            window: Duration::from_secs(1),
        }),
        workflow_delay: Some(Duration::from_millis(300)),
        ..FakeConfig::default()
    })
    .await
    .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n[stores.twenty]\nkind = \"twenty\"\nbase_url = \"{}\"\napi_key = {{ env = \"TEST_TWENTY_KEY\" }}\nbatch_size = 50\nrequests_per_minute = 40\nrate_window_secs = 1.0\n",
            fake.base_url()
        ),
    )
    .unwrap();

    let (d2, k2) = (d.clone(), key.clone());
    let blocking = move |args: Vec<&'static str>| {
        let (d, k) = (d2.clone(), k2.clone());
        tokio::task::spawn_blocking(move || ok(&d, &args, &k))
    };
    // Before `migrate` the safety check names the missing custom fields.
    let (d3, k3) = (d.clone(), key.clone());
    let out = tokio::task::spawn_blocking(move || run(&d3, &["check"], &k3))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("twenty: custom fields")
            && text.contains("missing: ")
            && text.contains("contactId"),
        "{text}"
    );
    assert!(!text.contains(&key) && !String::from_utf8_lossy(&out.stderr).contains(&key));
    blocking(vec!["migrate"]).await.unwrap();
    let text = blocking(vec!["check"]).await.unwrap();
    assert!(
        text.contains("twenty: custom fields") && text.contains("all present"),
        "{text}"
    );
    assert!(text.contains("twenty: rate-limit headroom"), "{text}");
    // A wrong API key: UNSAFE, the store named, the key never printed.
    let d4 = d.clone();
    let out = tokio::task::spawn_blocking(move || run(&d4, &["check"], "wrong-key-123"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("UNSAFE") && text.contains("twenty"), "{text}");
    assert!(
        !text.contains("wrong-key-123")
            && !String::from_utf8_lossy(&out.stderr).contains("wrong-key-123")
    );
    blocking(vec!["seed", "--contacts", "300"]).await.unwrap();
    let out = blocking(vec!["run", "--initial-sync", "--once"])
        .await
        .unwrap();
    assert!(out.contains("twenty") && !out.contains("DRIFT"), "{out}");

    // Every contact but category X is in Twenty, once.
    let conn = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    let not_x: i64 = conn
        .query_row(
            "SELECT count(*) FROM contacts WHERE category_code IS NOT 'X' AND deleted_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        not_x > 0 && not_x < 300,
        "the synthetic set has some X contacts: {not_x}"
    );
    let live: Vec<Value> = fake
        .people()
        .into_iter()
        .filter(|p| p["deletedAt"].is_null())
        .collect();
    assert_eq!(live.len() as i64, not_x);

    // Twenty's workflow touches every new person a moment later: no
    // conflicts, no writes back, no loop.
    let created = live.len() as u64;
    let start = std::time::Instant::now();
    while fake.counters().workflow_updates < created {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the workflow touched {} of {created} people",
            fake.counters().workflow_updates
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocking(vec!["run", "--once"]).await.unwrap();
    let before = writes(&fake);
    let out = blocking(vec!["run", "--once"]).await.unwrap();
    assert_eq!(
        writes(&fake),
        before,
        "an idle cycle wrote to Twenty: {out}"
    );
    let conflicts: Value =
        serde_json::from_str(&blocking(vec!["conflicts", "list", "--json"]).await.unwrap())
            .unwrap();
    assert_eq!(conflicts.as_array().unwrap().len(), 0, "{conflicts}");
    // Issue 13, observation 3: nothing came back from Twenty as an edit
    // (an empty JSON list it stores as null is the same value).
    let from_twenty: i64 = rusqlite::Connection::open(d.join("contact-sync-data/canonical.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM contacts WHERE last_updated_by = 'twenty'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(from_twenty, 0, "contacts taken as edits made in Twenty");

    // A person edits someone in Twenty (through its API, as the UI would).
    let target = live
        .iter()
        .find(|p| p["contactId"].is_string())
        .expect("a synced person");
    let contact_id = target["contactId"].as_str().unwrap().to_string();
    let person_id = target["id"].as_str().unwrap().to_string();
    let resp = reqwest::Client::new()
        .patch(format!("{}/rest/people/{person_id}", fake.base_url()))
        .bearer_auth(&key)
        .json(&serde_json::json!({"jobTitle": "Head of Twenty Edits"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    blocking(vec!["run", "--once"]).await.unwrap();
    let d3 = d.clone();
    let k3 = key.clone();
    let cid = contact_id.clone();
    let show = tokio::task::spawn_blocking(move || ok(&d3, &["show", &cid, "--json"], &k3))
        .await
        .unwrap();
    let c: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(c["job_title"], "Head of Twenty Edits", "{c}");
    assert_eq!(c["last_updated_by"], "twenty", "{c}");
    let local: String = conn
        .query_row(
            "SELECT job_title FROM contacts WHERE contact_id = ?1",
            [&contact_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(local, "Head of Twenty Edits");
    fake.stop().await;
}

/// With the daemon running, an edit in Twenty arrives by signed webhook and
/// reaches the local store without waiting for the polling interval; a
/// forged webhook is refused.
/// Waits (deadline 30 s) until the daemon's `/metrics` counts a finished
/// cycle.
async fn first_cycle_done(client: &reqwest::Client, port: u16) {
    let start = std::time::Instant::now();
    loop {
        let metrics = match client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let cycles: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("contact_sync_cycles_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if cycles >= 1.0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not finish a cycle within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_from_twenty_reaches_the_local_store_at_once() {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n[stores.twenty]\nkind = \"twenty\"\nbase_url = \"{}\"\napi_key = {{ env = \"TEST_TWENTY_KEY\" }}\nwebhook_secret = {{ env = \"TEST_TWENTY_HOOK\" }}\nwebhook_url = \"http://127.0.0.1:{port}/webhooks/twenty\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let run_blocking = |args: Vec<String>| {
        let (d, k) = (d.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_contact-sync"))
                .current_dir(&d)
                .args(["--config", "contact-sync.toml"])
                .args(&args)
                .env("TEST_TWENTY_KEY", &k)
                .env("TEST_TWENTY_HOOK", "hook-secret-for-tests")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    run_blocking(vec!["migrate".into()]).await.unwrap();
    run_blocking(vec!["seed".into(), "--contacts".into(), "30".into()])
        .await
        .unwrap();
    run_blocking(vec!["run".into(), "--initial-sync".into(), "--once".into()])
        .await
        .unwrap();

    // The daemon, polling only every 10 minutes: only a webhook can be fast.
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(&d)
        .args(["--config", "contact-sync.toml", "run", "--interval", "600"])
        .env("TEST_TWENTY_KEY", &key)
        .env("TEST_TWENTY_HOOK", "hook-secret-for-tests")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    // Up, and its first cycle (which polls Twenty) finished: what follows
    // is driven by the webhook alone.
    first_cycle_done(&client, port).await;

    // A forged webhook is refused.
    let forged = client
        .post(format!("http://127.0.0.1:{port}/webhooks/twenty"))
        .header("X-Twenty-Webhook-Timestamp", "1795413005786")
        .header("X-Twenty-Webhook-Nonce", "n1")
        .header("X-Twenty-Webhook-Signature", "00".repeat(32))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(forged.status().is_client_error(), "{}", forged.status());

    let person = fake
        .people()
        .into_iter()
        .find(|p| p["contactId"].is_string() && p["deletedAt"].is_null())
        .expect("a synced person");
    let contact_id = person["contactId"].as_str().unwrap().to_string();
    let polls_before = fake.counters().route("GET /rest/people");
    let resp = client
        .patch(format!(
            "{}/rest/people/{}",
            fake.base_url(),
            person["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .json(&serde_json::json!({"jobTitle": "Changed by webhook"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let local = d.join("contact-sync-data/local.db");
    let mut arrived = false;
    for _ in 0..200 {
        let title: Option<String> = rusqlite::Connection::open(&local)
            .and_then(|c| {
                c.busy_timeout(Duration::from_secs(2))?;
                c.query_row(
                    "SELECT job_title FROM contacts WHERE contact_id = ?1",
                    [&contact_id],
                    |r| r.get(0),
                )
            })
            .ok()
            .flatten();
        if title.as_deref() == Some("Changed by webhook") {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let webhooks: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("contact_sync_store_webhook_events_total{store=\"twenty\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(webhooks >= 1.0, "webhook deliveries counted: {metrics}");
    let status = daemon.wait().unwrap();
    assert!(
        arrived,
        "the edit did not reach the local store within 10 s"
    );
    assert_eq!(status.code(), Some(0));
    assert!(fake.counters().webhooks_delivered > 0);
    // The webhook-driven cycle did not spend a request of Twenty's budget on
    // polling (the daemon had polled less than 30 s before).
    assert_eq!(fake.counters().route("GET /rest/people"), polls_before);
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_twentys_clock_from_the_date_header_and_flags_a_skewed_one() {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.twenty]\nkind = \"twenty\"\nbase_url = \"{}\"\napi_key = {{ env = \"TEST_TWENTY_KEY\" }}\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let check = {
        let (d, key) = (d.clone(), key.clone());
        move || {
            let (d, key) = (d.clone(), key.clone());
            tokio::task::spawn_blocking(move || {
                let out = run(&d, &["check", "--json"], &key);
                let report: Value = serde_json::from_slice(&out.stdout).expect("check --json");
                let clock = report["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == "twenty: clock")
                    .unwrap_or_else(|| panic!("no twenty: clock in {report}"))
                    .clone();
                (out.status.code(), report["verdict"].clone(), clock)
            })
        }
    };
    {
        let (d, key) = (d.clone(), key.clone());
        tokio::task::spawn_blocking(move || ok(&d, &["migrate"], &key))
            .await
            .unwrap();
    }

    // Same clock: agreement within the Date header's whole second.
    let (code, _, clock) = check().await.unwrap();
    assert_eq!(code, Some(0), "{clock}");
    assert_eq!(clock["level"], "ok", "{clock}");
    let msg = clock["message"].as_str().unwrap();
    assert!(
        msg.contains("agrees with this machine's within ±") && msg.contains("Date header"),
        "{clock}"
    );

    // Thirty seconds ahead: a warning; running stays allowed.
    fake.set_clock_skew(chrono::TimeDelta::seconds(30));
    let (code, verdict, clock) = check().await.unwrap();
    assert_eq!(
        (code, verdict.as_str()),
        (Some(0), Some("SAFE_WITH_WARNINGS")),
        "{clock}"
    );
    assert_eq!(clock["level"], "warn", "{clock}");
    assert!(
        clock["message"].as_str().unwrap().contains("clock is +"),
        "{clock}"
    );
    assert!(clock["hint"].as_str().unwrap().contains("NTP"), "{clock}");

    // Ten minutes behind: unsafe (signed webhooks would be refused).
    fake.set_clock_skew(chrono::TimeDelta::minutes(-10));
    let (code, verdict, clock) = check().await.unwrap();
    assert_eq!(
        (code, verdict.as_str()),
        (Some(1), Some("UNSAFE")),
        "{clock}"
    );
    assert_eq!(clock["level"], "fail", "{clock}");
    assert!(
        clock["message"].as_str().unwrap().contains("clock is -"),
        "{clock}"
    );
}

/// Issue 13 item 10: every Twenty store gets its webhook route,
/// `/webhooks/twenty/<store>` (the first also `/webhooks/twenty`), each
/// verifying with its own secret: a forged delivery is refused (401) on
/// each, an unknown store's route does not exist (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_twenty_store_has_its_webhook_route() {
    let a = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake a");
    let b = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake b");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = |name: &str, f: &FakeTwenty| {
        format!(
            "[stores.{name}]\nkind = \"twenty\"\nbase_url = \"{}\"\napi_key = {{ env = \"TEST_TWENTY_KEY\" }}\nwebhook_secret = {{ env = \"TEST_TWENTY_HOOK\" }}\nwebhook_url = \"http://127.0.0.1:{port}/webhooks/twenty/{name}\"\n\n",
            f.base_url()
        )
    };
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n{}{}[server]\nlisten = \"127.0.0.1:{port}\"\n",
            store("crm", &a),
            store("crm2", &b)
        ),
    )
    .unwrap();
    let key = a.api_key().to_string();
    let migrate = Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(&d)
        .args(["--config", "contact-sync.toml", "migrate"])
        .env("TEST_TWENTY_KEY", &key)
        .env("TEST_TWENTY_HOOK", "hook-secret-for-tests")
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(&d)
        .args(["--config", "contact-sync.toml", "run", "--interval", "600"])
        .env("TEST_TWENTY_KEY", &key)
        .env("TEST_TWENTY_HOOK", "hook-secret-for-tests")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.join("daemon.err")).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/health");
    let mut up = false;
    for _ in 0..400 {
        if client.get(&health).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forged = |path: &str| {
        client
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("X-Twenty-Webhook-Timestamp", "1795413005786")
            .header("X-Twenty-Webhook-Nonce", "n1")
            .header("X-Twenty-Webhook-Signature", "00".repeat(32))
            .body("{}")
            .send()
    };
    let mut statuses = Vec::new();
    if up {
        for path in [
            "/webhooks/twenty",
            "/webhooks/twenty/crm",
            "/webhooks/twenty/crm2",
            "/webhooks/twenty/nope",
        ] {
            statuses.push(forged(path).await.map(|r| r.status().as_u16()).ok());
        }
    }
    // Each workspace has its webhook, to its own store's route, and a
    // person created in either reaches local.db through it.
    let mut registered = Vec::new();
    let mut arrived = false;
    if up {
        for (name, f) in [("crm", &a), ("crm2", &b)] {
            let hooks: Value = client
                .get(format!("{}/rest/metadata/webhooks", f.base_url()))
                .bearer_auth(f.api_key())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            registered.push(
                hooks
                    .to_string()
                    .contains(&format!("/webhooks/twenty/{name}\"")),
            );
            let s = client
                .post(format!("{}/rest/people", f.base_url()))
                .bearer_auth(f.api_key())
                .json(&serde_json::json!({
                    "name": {"firstName": "Hook", "lastName": name},
                    "emails": {"primaryEmail": format!("hook.{name}@example.com"), "additionalEmails": []},
                }))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, 201);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let n: i64 = rusqlite::Connection::open(d.join("contact-sync-data/local.db"))
                .and_then(|c| {
                    c.query_row(
                        "SELECT count(*) FROM contacts WHERE _primary_email IN ('hook.crm@example.com', 'hook.crm2@example.com')",
                        [],
                        |r| r.get(0),
                    )
                })
                .unwrap_or(0);
            if n == 2 {
                arrived = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        up,
        "daemon HTTP server did not come up: {}",
        std::fs::read_to_string(d.join("daemon.err")).unwrap_or_default()
    );
    assert_eq!(statuses, vec![Some(401), Some(401), Some(401), Some(404)]);
    assert_eq!(registered, vec![true, true], "a webhook in each workspace");
    assert!(
        arrived,
        "people created in both workspaces reach local.db: {}",
        std::fs::read_to_string(d.join("daemon.err")).unwrap_or_default()
    );
    for f in [&a, &b] {
        let c = f.counters();
        assert!(
            c.webhooks_delivered > 0 && c.webhooks_failed == 0,
            "each workspace's deliveries were taken: {c:?}"
        );
    }
}

/// A person created in Twenty (no contact id) becomes a contact, and the
/// id goes back to that person at once: later edits of the contact
/// elsewhere reach it (found by the soak benchmark, issue 15: the
/// conditional write-back looked the person up by a contact id it did not
/// have yet, so it was refused and put off until the person's next edit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_created_in_twenty_gets_its_contact_id_written_back() {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n[stores.twenty]\nkind = \"twenty\"\nbase_url = \"{}\"\napi_key = {{ env = \"TEST_TWENTY_KEY\" }}\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let blocking = |args: Vec<&'static str>| {
        let (d, k) = (d.clone(), key.clone());
        tokio::task::spawn_blocking(move || ok(&d, &args, &k))
    };
    blocking(vec!["migrate"]).await.unwrap();
    blocking(vec!["seed", "--contacts", "10"]).await.unwrap();
    blocking(vec!["run", "--initial-sync", "--once"])
        .await
        .unwrap();

    let created: Value = reqwest::Client::new()
        .post(format!("{}/rest/people", fake.base_url()))
        .bearer_auth(&key)
        .json(&serde_json::json!({
            "name": {"firstName": "Ada", "lastName": "Twenty"},
            "emails": {"primaryEmail": "ada.twenty@example.com", "additionalEmails": []},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = created["data"]["createPerson"]["id"]
        .as_str()
        .expect("person id")
        .to_string();
    blocking(vec!["run", "--once"]).await.unwrap();

    let conn = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    let contact_id: String = conn
        .query_row(
            "SELECT contact_id FROM contacts WHERE _primary_email = 'ada.twenty@example.com'",
            [],
            |r| r.get(0),
        )
        .expect("the new person is a contact in local.db");
    assert_eq!(
        fake.person(&pid).unwrap()["contactId"],
        serde_json::json!(contact_id),
        "the contact id is written back to the person in the same cycle"
    );

    // Nothing is owed: the next cycle writes nothing to Twenty, and an
    // edit made in local.db reaches the person.
    let before = writes(&fake);
    blocking(vec!["run", "--once"]).await.unwrap();
    assert_eq!(writes(&fake), before, "an idle cycle wrote to Twenty");
    conn.execute(
        "UPDATE contacts SET job_title = 'Edited locally' WHERE contact_id = ?1",
        [&contact_id],
    )
    .unwrap();
    blocking(vec!["run", "--once"]).await.unwrap();
    assert_eq!(
        fake.person(&pid).unwrap()["jobTitle"],
        serde_json::json!("Edited locally")
    );
    let people = fake
        .people()
        .into_iter()
        .filter(|p| p["emails"]["primaryEmail"] == "ada.twenty@example.com")
        .count();
    assert_eq!(people, 1, "one person, not a second one");
    fake.stop().await;
}

/// A config with local.db and one Twenty store on `fake`; `migrate`,
/// `seed --contacts n` and an initial sync done.
async fn synced(fake: &FakeTwenty, n: &'static str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n[stores.twenty]\nkind = \"twenty\"\nbase_url = \"{}\"\napi_key = {{ env = \"TEST_TWENTY_KEY\" }}\n",
            fake.base_url()
        ),
    )
    .unwrap();
    let key = fake.api_key().to_string();
    tokio::task::spawn_blocking(move || {
        ok(&d, &["migrate"], &key);
        ok(&d, &["seed", "--contacts", n], &key);
        ok(&d, &["run", "--initial-sync", "--once"], &key);
    })
    .await
    .unwrap();
    dir
}

/// The people of `fake` that carry a contact id, sorted by it.
fn linked_people(fake: &FakeTwenty) -> Vec<Value> {
    let mut people: Vec<Value> = fake
        .people()
        .into_iter()
        .filter(|p| p["contactId"].as_str().is_some_and(|c| !c.is_empty()))
        .collect();
    people.sort_by_key(|p| p["contactId"].as_str().unwrap_or_default().to_string());
    people
}

/// Issue 13, observation 7: a person whose `contactTags` is an object (the
/// shape the live run met) is named by `drift` — store, person id, contact
/// id, field, reason — and every other person is still compared (one
/// edited in Twenty shows as differing); `--json` lists it too, the exit
/// code says drift, and a repair leaves that person alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_names_an_unreadable_person_and_compares_the_rest() {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = synced(&fake, "20").await;
    let d = dir.path().to_path_buf();
    let people = linked_people(&fake);
    assert!(people.len() >= 3, "seeded people reached Twenty");
    let bad = people[0]["id"].as_str().unwrap().to_string();
    let bad_cid = people[0]["contactId"].as_str().unwrap().to_string();
    let edited = people[2]["id"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    for (pid, body) in [
        (&bad, serde_json::json!({"contactTags": {"not": "a list"}})),
        (&edited, serde_json::json!({"jobTitle": "Edited in Twenty"})),
    ] {
        let s = http
            .patch(format!("{}/rest/people/{pid}", fake.base_url()))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(s, 200);
    }

    // Any store: a local.db row another program broke (tags not JSON).
    let broken_local = people[1]["contactId"].as_str().unwrap().to_string();
    rusqlite::Connection::open(d.join("contact-sync-data/local.db"))
        .unwrap()
        .execute(
            "UPDATE contacts SET tags = '{not json' WHERE contact_id = ?1",
            [&broken_local],
        )
        .unwrap();

    let (d2, k2) = (d.clone(), key.clone());
    let (text, json) = tokio::task::spawn_blocking(move || {
        (
            run(&d2, &["drift"], &k2),
            run(&d2, &["drift", "--json"], &k2),
        )
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&text.stdout).to_string();
    assert_eq!(text.status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot be read as contacts")
            && out.contains(&bad)
            && out.contains(&bad_cid)
            && out.contains("field tags"),
        "{out}"
    );
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).expect("drift --json");
    let twenty = report["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"] == "twenty")
        .expect("twenty in the report")
        .clone();
    let unreadable = twenty["unreadable"].as_array().expect("unreadable listed");
    assert_eq!(unreadable.len(), 1, "{twenty}");
    assert_eq!(unreadable[0]["store"], "twenty");
    assert_eq!(unreadable[0]["native_id"], serde_json::json!(bad));
    assert_eq!(unreadable[0]["contact_id"], serde_json::json!(bad_cid));
    assert_eq!(unreadable[0]["field"], "tags");
    assert!(
        !unreadable[0]["reason"].as_str().unwrap_or("").is_empty(),
        "{twenty}"
    );
    // The rest compared: the edited one differs, the others match; the
    // unreadable one is neither missing nor differing.
    let expected = twenty["expected"].as_u64().unwrap();
    assert_eq!(twenty["differing"], 1, "{twenty}");
    assert_eq!(twenty["missing"], 0, "{twenty}");
    assert_eq!(twenty["extra"], 0, "{twenty}");
    assert_eq!(
        twenty["matching"].as_u64().unwrap(),
        expected - 2,
        "{twenty}"
    );
    let local = report["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"] == "local")
        .expect("local in the report");
    let local_bad = local["unreadable"].as_array().expect("local's listed");
    assert_eq!(local_bad.len(), 1, "{local}");
    assert_eq!(local_bad[0]["contact_id"], serde_json::json!(broken_local));
    assert_eq!(local_bad[0]["field"], "tags", "{local}");
    assert_eq!(local["missing"], 0, "{local}");
    assert_eq!(local["differing"], 0, "{local}");

    // A repair leaves the unreadable person as it is (a person fixes it).
    let (d3, k3) = (d.clone(), key.clone());
    let repaired = tokio::task::spawn_blocking(move || run(&d3, &["drift", "--repair"], &k3))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&repaired.stdout).to_string();
    assert!(out.contains(&bad), "{out}");
    assert_eq!(
        fake.person(&bad).unwrap()["contactTags"],
        serde_json::json!({"not": "a list"}),
        "{out}"
    );
    fake.stop().await;
}

/// Issue 13, observation 4 across a restart: a person destroyed in Twenty
/// (plain `DELETE`, as live Twenty destroys) while the daemon was stopped
/// is a delete at the next start — the first destroy sweep compares with
/// what the state database says Twenty holds — so the contact becomes a
/// tombstone everywhere (DESIGN.md: deletes are versioned tombstones), and
/// `drift --repair` does not bring the person back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_destroyed_while_the_daemon_was_stopped_is_deleted_everywhere() {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = synced(&fake, "12").await;
    let d = dir.path().to_path_buf();
    let people = linked_people(&fake);
    let pid = people[1]["id"].as_str().unwrap().to_string();
    let cid = people[1]["contactId"].as_str().unwrap().to_string();
    // The daemon is stopped (each command above was its own process).
    let s = reqwest::Client::new()
        .delete(format!("{}/rest/people/{pid}", fake.base_url()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 200);
    assert!(fake.person(&pid).is_none(), "destroyed, not in the trash");

    let (d2, k2) = (d.clone(), key.clone());
    tokio::task::spawn_blocking(move || ok(&d2, &["run", "--once"], &k2))
        .await
        .unwrap();
    let deleted_in = |file: &str| -> Option<String> {
        let conn = rusqlite::Connection::open(d.join("contact-sync-data").join(file)).unwrap();
        conn.query_row(
            "SELECT deleted_at FROM contacts WHERE contact_id = ?1",
            [&cid],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(
        deleted_in("local.db").is_some(),
        "the destroy reached local.db"
    );
    assert!(
        deleted_in("canonical.db").is_some(),
        "the destroy reached canonical"
    );

    let (d3, k3) = (d.clone(), key.clone());
    let out = tokio::task::spawn_blocking(move || run(&d3, &["drift", "--repair"], &k3))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        !fake
            .people()
            .iter()
            .any(|p| p["id"] == serde_json::json!(pid) || p["contactId"] == serde_json::json!(cid)),
        "drift --repair brought the destroyed person back"
    );
    fake.stop().await;
}

/// The same field edited in Twenty and in local.db between two cycles,
/// then two cycles: the fake, the directory, the person and contact ids.
async fn settled_conflict() -> (FakeTwenty, tempfile::TempDir, String, String) {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = synced(&fake, "10").await;
    let d = dir.path().to_path_buf();
    let people = linked_people(&fake);
    let pid = people[0]["id"].as_str().unwrap().to_string();
    let cid = people[0]["contactId"].as_str().unwrap().to_string();
    let s = reqwest::Client::new()
        .patch(format!("{}/rest/people/{pid}", fake.base_url()))
        .bearer_auth(&key)
        .json(&serde_json::json!({"jobTitle": "Set in Twenty"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 200);
    db(&d, "local.db")
        .execute(
            "UPDATE contacts SET job_title = 'Set in local.db' WHERE contact_id = ?1",
            [&cid],
        )
        .unwrap();
    tokio::task::spawn_blocking(move || {
        ok(&d, &["run", "--once"], &key);
        ok(&d, &["run", "--once"], &key);
    })
    .await
    .unwrap();
    (fake, dir, pid, cid)
}

fn db(d: &Path, file: &str) -> rusqlite::Connection {
    rusqlite::Connection::open(d.join("contact-sync-data").join(file)).unwrap()
}

/// `job_title` and `version` of a contact in an SQLite store.
fn title_and_version(d: &Path, file: &str, cid: &str) -> (String, i64) {
    db(d, file)
        .query_row(
            "SELECT job_title, version FROM contacts WHERE contact_id = ?1",
            [cid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

/// Issue 13, observation 8: the same field edited in Twenty and in
/// local.db between two cycles is settled by the rules, and the settled
/// conflict is inspectable in `conflicts list --all` (both values, their
/// versions, the rule that decided, the store), as JSON and as text;
/// afterwards local.db, canonical and Twenty hold the same value, and
/// Twenty canonical's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_settled_by_the_rules_is_listed_with_both_values_and_the_rule() {
    let (fake, dir, pid, cid) = settled_conflict().await;
    let d = dir.path().to_path_buf();
    let key = fake.api_key().to_string();
    let (listed, text) = tokio::task::spawn_blocking(move || {
        (
            ok(&d, &["conflicts", "list", "--all", "--json"], &key),
            ok(&d, &["conflicts", "list", "--all"], &key),
        )
    })
    .await
    .unwrap();
    let rows: Value = serde_json::from_str(&listed).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["contact_id"] == serde_json::json!(cid) && r["conflict"]["field"] == "job_title"
        })
        .unwrap_or_else(|| panic!("the settled conflict is listed: {listed}"));
    let values = [
        row["conflict"]["canonical"].clone(),
        row["conflict"]["incoming"].clone(),
    ];
    assert!(
        values.contains(&serde_json::json!("Set in Twenty"))
            && values.contains(&serde_json::json!("Set in local.db")),
        "both values: {row}"
    );
    let rule = row["conflict"]["resolution"].as_str().unwrap_or_default();
    assert!(!rule.is_empty(), "the rule: {row}");
    assert_ne!(row["status"], "open", "settled by the rules: {row}");
    assert!(
        text.contains(&cid)
            && text.contains("job_title")
            && text.contains(&format!("rule: {rule}")),
        "the text names both values and the rule: {text}"
    );

    let d = dir.path();
    let canonical = title_and_version(d, "canonical.db", &cid);
    assert_eq!(title_and_version(d, "local.db", &cid).0, canonical.0);
    let person = fake.person(&pid).unwrap();
    assert_eq!(person["jobTitle"], serde_json::json!(canonical.0));
    assert_eq!(
        person["contactVersion"],
        serde_json::json!(canonical.1),
        "{person}"
    );
    fake.stop().await;
}

/// Observation 8's second half: local.db's `version` column follows
/// canonical's after the settlement. When local.db's own edit wins,
/// canonical's new version has local.db's content: capture owes local.db a
/// write of that version, though the content hash is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_settled_conflict_every_store_has_canonicals_version() {
    let (fake, dir, _pid, cid) = settled_conflict().await;
    let d = dir.path();
    assert_eq!(
        title_and_version(d, "local.db", &cid),
        title_and_version(d, "canonical.db", &cid)
    );
    fake.stop().await;
}

/// Issue 13, observation 6 end to end: a contact Twenty refuses (its
/// primary email is that of another contact's person: a unique clash) is
/// one dead letter, named by record and field, seen once — later cycles
/// neither send it again nor add to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_twenty_refuses_is_one_dead_letter_across_cycles() {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let key = fake.api_key().to_string();
    let dir = synced(&fake, "10").await;
    let d = dir.path().to_path_buf();
    let people = linked_people(&fake);
    let taken = people[0]["emails"]["primaryEmail"]
        .as_str()
        .unwrap()
        .to_string();
    let cid = people[1]["contactId"].as_str().unwrap().to_string();
    db(&d, "local.db")
        .execute(
            "UPDATE contacts SET emails = ?1 WHERE contact_id = ?2",
            [
                &serde_json::json!([{"address": taken, "is_primary": true}]).to_string(),
                &cid,
            ],
        )
        .unwrap();
    let (d2, k2) = (d.clone(), key.clone());
    tokio::task::spawn_blocking(move || ok(&d2, &["run", "--once"], &k2))
        .await
        .unwrap();
    let sent = writes(&fake);
    let (d3, k3) = (d.clone(), key.clone());
    let listed = tokio::task::spawn_blocking(move || {
        ok(&d3, &["run", "--once"], &k3);
        ok(&d3, &["run", "--once"], &k3);
        ok(&d3, &["dead-letters", "list", "--all", "--json"], &k3)
    })
    .await
    .unwrap();
    assert_eq!(writes(&fake), sent, "the refused record was sent again");
    let rows: Value = serde_json::from_str(&listed).unwrap();
    let mine: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["store"] == "twenty")
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["record"], serde_json::json!(cid), "{listed}");
    assert_eq!(mine[0]["field"], "emails", "{listed}");
    assert_eq!(mine[0]["count"], 1, "{listed}");
    assert_eq!(
        fake.person(people[0]["id"].as_str().unwrap()).unwrap()["contactId"],
        people[0]["contactId"],
        "the other contact's person is untouched"
    );
    fake.stop().await;
}
