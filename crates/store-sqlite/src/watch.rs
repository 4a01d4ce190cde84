//! Real-time wake-ups for edits made to an SQLite store's file by anyone
//! but the engine (the sqlite3 CLI, an app): what NOTIFY is for Postgres.
//!
//! [`ChangeProbe`] holds its own read connection and answers "did anyone
//! record a change since I last looked?" cheaply: `PRAGMA data_version`
//! (no IO; changes only when another connection committed), and only then
//! the AUTOINCREMENT high-water mark of `_contact_sync_changes` in
//! `sqlite_sequence`. The capture triggers write that table only for
//! other writers (the engine's own writes suppress them), so the engine's
//! writes never wake it. [`spawn_watch`] polls a probe on a thread of its
//! own and calls back on each change.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Detects changes other writers made to an SQLite store file.
pub struct ChangeProbe {
    conn: Connection,
    data_version: i64,
    seq: i64,
}

impl ChangeProbe {
    /// Opens the file read-only (it must exist: open the store first).
    pub fn open(path: &Path) -> rusqlite::Result<ChangeProbe> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(500))?;
        let mut p = ChangeProbe {
            conn,
            data_version: 0,
            seq: 0,
        };
        p.data_version = p.data_version()?;
        p.seq = p.seq()?;
        Ok(p)
    }

    fn data_version(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("PRAGMA data_version", [], |r| r.get(0))
    }

    fn seq(&self) -> rusqlite::Result<i64> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT max(seq) FROM sqlite_sequence WHERE name = '_contact_sync_changes'",
            [],
            |r| r.get(0),
        )?;
        Ok(v.unwrap_or(0))
    }

    /// True when another writer recorded a change since the last call.
    pub fn changed(&mut self) -> rusqlite::Result<bool> {
        let dv = self.data_version()?;
        if dv == self.data_version {
            return Ok(false);
        }
        self.data_version = dv;
        let seq = self.seq()?;
        let changed = seq != self.seq;
        self.seq = seq;
        Ok(changed)
    }
}

/// Polls `path` every `every` on a thread of its own and calls `on_change`
/// when another writer recorded a change. Runs for the life of the
/// process; a probe that fails is opened again at the next poll.
pub fn spawn_watch(
    path: &Path,
    every: Duration,
    on_change: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    let path = path.to_path_buf();
    // The baseline is taken now, so an edit made from here on is seen
    // (one made before is the caller's to pick up, e.g. its first cycle).
    let mut probe: Option<ChangeProbe> = ChangeProbe::open(&path).ok();
    std::thread::Builder::new()
        .name("sqlite-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                if probe.is_none() {
                    probe = ChangeProbe::open(&path).ok();
                    continue;
                }
                match probe.as_mut().map(ChangeProbe::changed) {
                    Some(Ok(true)) => on_change(),
                    Some(Ok(false)) | None => {}
                    Some(Err(e)) => {
                        tracing::debug!(file = %path.display(), error = %e, "change probe failed; reopening");
                        probe = None;
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use contact_sync_connector::RecordSink;
    use contact_sync_core::Contact;

    #[tokio::test]
    async fn another_writer_is_seen_and_the_engines_own_writes_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.db");
        let mut store = crate::SqliteStore::open(&path, "local").unwrap();
        let mut probe = ChangeProbe::open(&path).unwrap();
        assert!(!probe.changed().unwrap());
        // The engine's write: no wake-up.
        store
            .write_batch(&[Contact::new("c1", "Ada")])
            .await
            .unwrap();
        assert!(!probe.changed().unwrap());
        // Someone else's edit: a wake-up, once.
        let other = Connection::open(&path).unwrap();
        other
            .execute(
                "UPDATE contacts SET notes = 'hand edit' WHERE contact_id = 'c1'",
                [],
            )
            .unwrap();
        assert!(probe.changed().unwrap());
        assert!(!probe.changed().unwrap());
    }
}
