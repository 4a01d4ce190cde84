//! Leases on a real Postgres: taken once, taken over only after expiry,
//! renewed by the holder, lost by a paused holder, released at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync_postgres::harness;
use contact_sync_state::lease::{Held, LeaseTimings, Leases};
use tokio_postgres::NoTls;

/// A state database on Postgres, migrated (the `leases` table is V8's).
async fn db() -> String {
    let url = harness::shared().create_database().await;
    contact_sync_state::StateDb::open_url(&url).expect("migrate the state database");
    url
}

async fn leases(url: &str) -> Arc<Leases> {
    Arc::new(Leases::connect(url).await.expect("connect leases"))
}

/// Waits for `cond` with a deadline.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> F,
) {
    let end = Instant::now() + deadline;
    while !cond().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_holder_at_a_time_and_the_token_grows_at_each_takeover() {
    let url = db().await;
    let l = leases(&url).await;
    let ttl = Duration::from_millis(600);
    let a = l.try_acquire("engine", "a", ttl, "a's info").await.unwrap();
    assert_eq!(a, Some(1));
    // Held and live: b cannot take it; a can renew and re-take it.
    assert_eq!(l.try_acquire("engine", "b", ttl, "").await.unwrap(), None);
    assert!(l.renew("engine", "a", 1, ttl).await.unwrap());
    assert_eq!(
        l.try_acquire("engine", "a", ttl, "").await.unwrap(),
        Some(1)
    );
    // Expired (by the server's clock): b takes it with the next token.
    let l2 = l.clone();
    until(
        "a's lease to expire and b to take it",
        Duration::from_secs(10),
        || {
            let l = l2.clone();
            async move { l.try_acquire("engine", "b", ttl, "b's info").await.unwrap() == Some(2) }
        },
    )
    .await;
    // a's renewal and release now fail: its token is stale.
    assert!(!l.renew("engine", "a", 1, ttl).await.unwrap());
    assert!(!l.release("engine", "a", 1).await.unwrap());
    let rows = l.list().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].holder.as_str(), rows[0].token), ("b", 2));
    assert!(rows[0].live);
    assert_eq!(rows[0].info, "b's info");
    // Released: a takes it at once, without waiting for the expiry.
    assert!(l.release("engine", "b", 2).await.unwrap());
    assert_eq!(
        l.try_acquire("engine", "a", Duration::from_secs(60), "")
            .await
            .unwrap(),
        Some(3)
    );
}

#[tokio::test]
async fn a_held_lease_is_renewed_and_a_standby_waits_until_release() {
    let url = db().await;
    let timings = LeaseTimings {
        ttl: Duration::from_millis(500),
        heartbeat: Duration::from_millis(100),
        poll: Duration::from_millis(50),
    };
    let (la, lb) = (leases(&url).await, leases(&url).await);
    let a = Held::acquire(la, "engine", "a", "", timings, || false)
        .await
        .unwrap()
        .expect("a takes the free lease");
    // The standby keeps polling; the holder's heartbeat keeps it out for
    // several ttls.
    let standby = tokio::spawn(async move {
        Held::acquire(lb, "engine", "b", "", timings, || false)
            .await
            .unwrap()
            .expect("b")
    });
    let watch = leases(&url).await;
    let start = Instant::now();
    while start.elapsed() < timings.ttl * 4 {
        let rows = watch.list().await.unwrap();
        assert_eq!(rows[0].holder, "a", "the holder renews its lease");
        assert!(!standby.is_finished());
        tokio::time::sleep(timings.heartbeat).await;
    }
    assert!(!a.is_lost());
    a.release().await;
    let b = tokio::time::timeout(Duration::from_secs(10), standby)
        .await
        .expect("b takes the lease after the release")
        .unwrap();
    assert_eq!(b.token, 2);
}

#[tokio::test]
async fn a_holder_whose_lease_was_taken_is_told_it_lost_it() {
    let url = db().await;
    let timings = LeaseTimings {
        ttl: Duration::from_millis(400),
        heartbeat: Duration::from_millis(80),
        poll: Duration::from_millis(50),
    };
    let la = leases(&url).await;
    let a = Held::acquire(la, "engine", "a", "", timings, || false)
        .await
        .unwrap()
        .unwrap();
    // As if a were paused past its ttl and b took over: the token moves on.
    let other = leases(&url).await;
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c.execute(
        "UPDATE leases SET holder = 'b', token = token + 1, expires_at = now() + interval '1 minute' WHERE name = 'engine'",
        &[],
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), a.lost())
        .await
        .expect("a's heartbeat notices the takeover");
    assert!(a.is_lost());
    // Releasing a lost lease leaves the new holder's alone.
    a.release().await;
    let rows = other.list().await.unwrap();
    assert_eq!(
        (rows[0].holder.as_str(), rows[0].token, rows[0].live),
        ("b", 2, true)
    );
}

#[tokio::test]
async fn a_standby_can_stop_waiting() {
    let url = db().await;
    let l = leases(&url).await;
    l.try_acquire("engine", "a", Duration::from_secs(60), "")
        .await
        .unwrap()
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let waiting = tokio::spawn(async move {
        Held::acquire(
            l,
            "engine",
            "b",
            "",
            LeaseTimings::for_failover(Duration::from_secs(2)),
            move || flag.load(std::sync::atomic::Ordering::SeqCst),
        )
        .await
        .unwrap()
        .is_none()
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends")
        .unwrap());
}

#[test]
fn timings_meet_the_failover_the_user_allows() {
    for secs in [2, 5, 15, 60] {
        let f = Duration::from_secs(secs);
        let t = LeaseTimings::for_failover(f);
        assert!(t.ttl + t.poll <= f, "{secs}: {t:?}");
        assert!(t.heartbeat * 4 < t.ttl, "{secs}: {t:?}");
    }
    let t = LeaseTimings::for_failover(Duration::from_secs(15));
    assert_eq!(t.poll, Duration::from_secs(1));
    assert_eq!(t.ttl, Duration::from_secs(14));
}

#[tokio::test]
async fn a_database_without_the_lease_table_is_an_error_not_a_wait() {
    let url = harness::shared().create_database().await;
    let l = leases(&url).await;
    let err = Held::acquire(
        l,
        "engine",
        "a",
        "",
        LeaseTimings::for_failover(Duration::from_secs(2)),
        || false,
    )
    .await
    .err()
    .expect("an error");
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("leases"), "{err}");
}
