//! Each state test runs on both backends: a SQLite file and a fresh
//! Postgres database (the store-postgres test harness: the server of
//! `CONTACT_SYNC_PG_URL`, or a private cluster; it panics with what to do
//! when there is no Postgres, so a test never passes having done nothing).
#![allow(dead_code)]

use contact_sync_state::{StateDb, StateTarget};

/// Where a test's state database lives.
pub struct Place {
    pub target: StateTarget,
    _dir: Option<tempfile::TempDir>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Place {
    pub fn sqlite() -> Place {
        let dir = tempfile::tempdir().unwrap();
        Place {
            target: StateTarget::Path(dir.path().join("state.db")),
            _dir: Some(dir),
        }
    }

    pub fn postgres() -> Place {
        let url = runtime().block_on(contact_sync_postgres::harness::shared().create_database());
        Place {
            target: StateTarget::Url(url),
            _dir: None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.target, StateTarget::Url(_))
    }

    /// Opens (and migrates) the database.
    pub fn open(&self) -> StateDb {
        StateDb::open_target(&self.target).unwrap()
    }

    /// Runs SQL behind the state database's back (to damage it).
    pub fn exec(&self, sql: &str) {
        match &self.target {
            StateTarget::Path(p) => rusqlite::Connection::open(p)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            StateTarget::Url(url) => runtime().block_on(async {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let task = tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
                drop(client);
                let _ = task.await;
            }),
        }
    }

    /// The target as an environment value for a child process.
    pub fn env_value(&self) -> String {
        match &self.target {
            StateTarget::Path(p) => format!("path:{}", p.display()),
            StateTarget::Url(u) => format!("url:{u}"),
        }
    }
}

/// The target a parent passed in [`Place::env_value`].
pub fn target_from_env(v: &str) -> StateTarget {
    match v.split_once(':') {
        Some(("path", p)) => StateTarget::Path(p.into()),
        Some(("url", u)) => StateTarget::Url(u.into()),
        _ => panic!("bad target {v:?}"),
    }
}

/// `on_both! { fn name(place) { … } }`: a module `name` with the tests
/// `sqlite` and `postgres`, each running the body with its [`Place`].
#[macro_export]
macro_rules! on_both {
    ($(#[$m:meta])* fn $name:ident($place:ident) $body:block $($rest:tt)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$m])*
            #[test]
            fn sqlite() {
                let $place = $crate::support::Place::sqlite();
                $body
            }
            $(#[$m])*
            #[test]
            fn postgres() {
                let $place = $crate::support::Place::postgres();
                $body
            }
        }
        $crate::on_both! { $($rest)* }
    };
    () => {};
}
