//! Wake-ups: LISTEN on the store's NOTIFY channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contact_sync_connector::StoreError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use crate::config::PgConfig;
use crate::store::{pg_err, qi};

/// Listens on the store's NOTIFY channel on a connection of its own and
/// wakes whoever awaits [`wait`](ChangeNotifier::wait).
///
/// A notification only says "something changed": read the changes with
/// [`contact_sync_connector::ChangeSource::read_changes`]. Notifications that
/// arrive while nobody waits are kept as one pending wake-up, so no change is
/// missed between two waits. When the connection drops, the notifier
/// reconnects with backoff and wakes the waiter once it listens again
/// (notifications sent meanwhile are lost, so the waiter should read).
/// Dropping the notifier stops it.
pub struct ChangeNotifier {
    notify: Arc<Notify>,
    listening: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for ChangeNotifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ChangeNotifier {
    /// Connects and LISTENs; errors if the first connection fails.
    pub(crate) async fn start(cfg: PgConfig) -> Result<ChangeNotifier, StoreError> {
        let notify = Arc::new(Notify::new());
        let listening = Arc::new(AtomicBool::new(false));
        let first = listen(&cfg, notify.clone()).await?;
        listening.store(true, Ordering::SeqCst);
        let task = tokio::spawn(supervise(cfg, notify.clone(), listening.clone(), first));
        Ok(ChangeNotifier {
            notify,
            listening,
            task,
        })
    }

    /// Waits for the next notification (returns at once if one arrived
    /// since the last wait).
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// The underlying [`Notify`], to combine with other wake-up sources.
    pub fn handle(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Whether the LISTEN connection is up right now.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }
}

type Listening = (Client, JoinHandle<()>);

async fn listen(cfg: &PgConfig, notify: Arc<Notify>) -> Result<Listening, StoreError> {
    let pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .map_err(|_| StoreError::permanent(&cfg.name, "the connection string is not valid"))?;
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| pg_err(&cfg.name, "connecting the change listener", &e))?;
    let driver = tokio::spawn(drive(connection, notify));
    client
        .batch_execute(&format!("LISTEN {}", qi(&cfg.notify_channel)))
        .await
        .map_err(|e| pg_err(&cfg.name, "LISTEN on the change channel", &e))?;
    Ok((client, driver))
}

async fn drive<S, T>(mut connection: Connection<S, T>, notify: Arc<Notify>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => notify.notify_one(),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "change listener connection failed");
                return;
            }
            None => return,
        }
    }
}

async fn supervise(
    cfg: PgConfig,
    notify: Arc<Notify>,
    listening: Arc<AtomicBool>,
    first: Listening,
) {
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        if let Some((client, driver)) = current.take() {
            let _ = driver.await;
            drop(client);
            listening.store(false, Ordering::SeqCst);
        }
        tokio::time::sleep(backoff).await;
        match listen(&cfg, notify.clone()).await {
            Ok(l) => {
                listening.store(true, Ordering::SeqCst);
                backoff = Duration::from_millis(200);
                // Changes may have been committed while we were away.
                notify.notify_one();
                current = Some(l);
            }
            Err(e) => {
                tracing::warn!(store = %cfg.name, error = %e, "change listener: reconnect failed");
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
