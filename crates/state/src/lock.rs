//! The single-instance lock: an OS advisory lock (`flock`, through
//! `std::fs::File::try_lock`) on `<db path>.lock`, holding "pid since".
//! On Postgres: a session advisory lock on the database's connection, the
//! holder ("pid since host") in meta `lock:holder`; the server drops it when
//! the session ends, kill -9 included.
//!
//! The OS drops the lock when the holding process exits for any reason
//! (including kill -9), so a stale lock file never blocks a restart: only a
//! live holder does. The file itself is left in place (deleting a lock file
//! that others may have open races with them).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::db::{p, Backend};
use crate::pg::{PgConn, HOLDER_META, INSTANCE_KEY};
use crate::{Result, StateError};

/// How often `acquire` retries a busy lock before giving up, and the pause
/// between tries. This only rides out `lock_holder` probes, which hold a
/// shared lock for microseconds; a real holder keeps it for its lifetime.
const ATTEMPTS: u32 = 5;
const PAUSE: Duration = Duration::from_millis(20);

/// `<db path>.lock`.
pub(crate) fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn open_err(db: &Path, lock: &Path, what: &str, e: io::Error) -> StateError {
    StateError::Open {
        path: db.to_path_buf(),
        message: format!("{what} lock file {}: {e}", lock.display()),
    }
}

/// Parses the "pid since" text of a lock file; unknown parts say so.
fn parse_holder(text: &str) -> (String, String) {
    let text = text.trim();
    let (pid, since) = text.split_once(' ').unwrap_or((text, ""));
    let or_unknown = |s: &str| {
        let s = s.trim();
        if s.is_empty() {
            "unknown".to_string()
        } else {
            s.to_string()
        }
    };
    (or_unknown(pid), or_unknown(since))
}

fn read_holder(file: &mut File) -> io::Result<(String, String)> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    // Bounded: the file holds one short line; anything longer is not ours.
    file.take(4096).read_to_string(&mut text)?;
    Ok(parse_holder(&text))
}

/// Takes the exclusive lock for `db`, writing "pid since" into the lock file.
pub(crate) fn acquire(db: &Path) -> Result<File> {
    let path = lock_path(db);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| open_err(db, &path, "opening", e))?;
    let mut attempt = 1;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if attempt < ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(PAUSE);
            }
            Err(TryLockError::WouldBlock) => {
                let (pid, since) = read_holder(&mut file)
                    .unwrap_or_else(|_| ("unknown".to_string(), "unknown".to_string()));
                return Err(StateError::Locked {
                    path: db.to_path_buf(),
                    pid,
                    since,
                });
            }
            Err(TryLockError::Error(e)) => return Err(open_err(db, &path, "locking", e)),
        }
    }
    let since = contact_sync_core::model::format_ts(&contact_sync_core::model::now());
    let text = format!("{} {}\n", std::process::id(), since);
    let write = |file: &mut File| -> io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(text.as_bytes())?;
        file.sync_data()
    };
    write(&mut file).map_err(|e| open_err(db, &path, "writing", e))?;
    Ok(file)
}

/// Whether some process (this one included) holds the lock for `db` now,
/// and what it wrote there. Never keeps the lock.
pub(crate) fn holder(db: &Path) -> Result<Option<(String, String)>> {
    let path = lock_path(db);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_err(db, &path, "opening", e)),
    };
    match file.try_lock_shared() {
        // Nobody holds it exclusively; closing `file` releases our probe.
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => read_holder(&mut file)
            .map(Some)
            .map_err(|e| open_err(db, &path, "reading", e)),
        Err(TryLockError::Error(e)) => Err(open_err(db, &path, "probing", e)),
    }
}

/// Clears the holder text before the lock is released, so a later reader
/// never sees a dead holder's pid. Best effort: the lock goes either way.
pub(crate) fn release(file: &File) {
    let _ = file.set_len(0);
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// "pid since host" as stored → (pid as shown, since).
fn parse_pg_holder(text: &str) -> (String, String) {
    let mut parts = text.split_whitespace();
    let pid = parts.next().unwrap_or("unknown");
    let since = parts.next().unwrap_or("unknown");
    match parts.next() {
        Some(host) => (format!("{pid} on {host}"), since.to_string()),
        None => (pid.to_string(), since.to_string()),
    }
}

fn pg_holder_text(db: &Backend) -> Result<(String, String)> {
    Ok(crate::read::meta(db, HOLDER_META)?
        .map(|t| parse_pg_holder(&t))
        .unwrap_or_else(|| ("unknown".into(), "unknown".into())))
}

/// Takes the session advisory lock on `pg` (the connection of `db`).
pub(crate) fn acquire_pg(db: &Backend, pg: &PgConn) -> Result<()> {
    // A session lock is re-entrant within its session: another StateLock
    // of this StateDb must be refused like another process. A daemon
    // holding the engine lease counts as a holder too.
    if let Some((pid, since)) = holder_pg(db)? {
        return Err(StateError::Locked {
            path: pg.location.clone().into(),
            pid,
            since,
        });
    }
    if !pg.try_lock()? {
        let (pid, since) = pg_holder_text(db)?;
        return Err(StateError::Locked {
            path: pg.location.clone().into(),
            pid,
            since,
        });
    }
    let since = contact_sync_core::model::format_ts(&contact_sync_core::model::now());
    let text = format!("{} {} {}", std::process::id(), since, host());
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        p![HOLDER_META, text],
    )?;
    Ok(())
}

/// Whether a session (this one included) holds the instance lock of the
/// database, and who it says it is.
pub(crate) fn holder_pg(db: &Backend) -> Result<Option<(String, String)>> {
    if let Some(h) = lease_holder(db)? {
        return Ok(Some(h));
    }
    command_holder_pg(db)
}

/// The daemon holding a live lease (several daemons share the database):
/// (pid, since), from what it wrote of itself ("pid N, …").
fn lease_holder(db: &Backend) -> Result<Option<(String, String)>> {
    Ok(crate::lease::rows(db)?
        .into_iter()
        .find(|l| l.live)
        .map(|l| (l.pid().to_string(), l.acquired_at)))
}

/// Whether a session holds the instance lock (a command driving the
/// stores, or a lone daemon), leases aside.
pub(crate) fn command_holder_pg(db: &Backend) -> Result<Option<(String, String)>> {
    let held: bool = db.query_value(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = ?1)",
        p![INSTANCE_KEY],
    )?;
    if !held {
        return Ok(None);
    }
    pg_holder_text(db).map(Some)
}

/// Releases the instance lock held by the session of `pg`.
pub(crate) fn release_pg(pg: &PgConn) {
    pg.unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_holder_text() {
        assert_eq!(
            parse_holder("123 2026-01-01T00:00:00.000000Z\n"),
            ("123".to_string(), "2026-01-01T00:00:00.000000Z".to_string())
        );
        assert_eq!(
            parse_holder(""),
            ("unknown".to_string(), "unknown".to_string())
        );
        assert_eq!(
            parse_holder("77"),
            ("77".to_string(), "unknown".to_string())
        );
    }

    #[test]
    fn lock_path_appends_suffix() {
        assert_eq!(
            lock_path(Path::new("/data/state.db")),
            PathBuf::from("/data/state.db.lock")
        );
    }
}
