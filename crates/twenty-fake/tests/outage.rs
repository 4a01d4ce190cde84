//! An outage of the fake: while it is down, connections are refused; when
//! it comes back (same address), it has the people it had.

use std::time::Duration;

use contact_sync_twenty_fake::{FakeConfig, FakeTwenty};
use serde_json::{json, Value};

#[tokio::test]
async fn an_outage_refuses_connections_and_keeps_the_data() {
    let mut fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake twenty");
    let url = format!("{}/rest/people", fake.base_url());
    let key = fake.api_key().to_string();
    let http = reqwest::Client::new();
    let created = http
        .post(&url)
        .bearer_auth(&key)
        .json(
            &json!({"name": {"firstName": "Ada", "lastName": "Lovelace"},
                      "emails": {"primaryEmail": "ada@example.com"}}),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);

    fake.go_offline(Duration::from_secs(2)).await;
    assert!(fake.is_offline());
    // A new client: nothing pooled from before the outage.
    let err = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect_err("refused while down");
    assert!(err.is_connect(), "{err}");
    assert_eq!(fake.people().len(), 1, "the data stays while down");

    fake.come_back().await.expect("back on the same address");
    assert!(!fake.is_offline());
    let list: Value = http
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect("list after the outage")
        .json()
        .await
        .expect("json");
    let people = list["data"]["people"].as_array().expect("people");
    assert_eq!(people.len(), 1, "{list}");
    assert_eq!(people[0]["emails"]["primaryEmail"], "ada@example.com");
    fake.stop().await;
}
