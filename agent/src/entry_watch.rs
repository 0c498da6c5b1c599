//! Keeps one stream open to a server replica on which it is told that this agent's
//! authorized entries changed (`testudo.agent.v1.EntryNotifications`), and wakes the sync
//! loop at once. The stream goes to the replica the pool calls first, and is opened again
//! (there or at another replica) when it breaks. The periodic sync stays the safety net:
//! against servers that do not offer the stream (SPIRE's), it is all there is.

use std::sync::Arc;
use std::time::Duration;

use proto::agent_push::entry_notifications_client::EntryNotificationsClient;
use proto::agent_push::WatchAuthorizedEntriesRequest;
use tokio::sync::Notify;
use tonic::Code;

use server_pool::{jitter, Hedge, ServerPool};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long to wait before asking again servers that do not offer the stream.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(300);

/// Wakes `sync` each time the servers say this agent's entries changed (and each time a
/// stream opens, to catch up on what happened while none was open). Runs until dropped.
pub async fn watch(pool: Arc<ServerPool>, sync: Arc<Notify>) {
    let mut retry = RETRY_MIN;
    loop {
        let opened = pool
            .call(1, Hedge::Never, |channel| async move {
                let mut client = EntryNotificationsClient::new(channel);
                client.watch_authorized_entries(WatchAuthorizedEntriesRequest {}).await.map(|r| r.into_inner())
            })
            .await;
        let wait = match opened {
            Ok(mut stream) => {
                tracing::debug!(server = %pool.current(), "entry notifications open");
                loop {
                    match stream.message().await {
                        Ok(Some(change)) => {
                            metrics::counter!("testudo_agent_entry_notifications_total").increment(1);
                            tracing::debug!(revision = change.revision, "authorized entries changed; syncing now");
                            sync.notify_one();
                            retry = RETRY_MIN;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(code = ?status.code(), error = %status.message(), "entry notifications ended");
                            break;
                        }
                    }
                }
                jitter(retry)
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::info!("the servers do not push entry changes; syncing on the interval only");
                UNSUPPORTED_RETRY
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), error = %status.message(), "cannot open entry notifications");
                jitter(retry)
            }
        };
        tokio::time::sleep(wait).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}
