//! `testudo.agent.v1.EntryNotifications`: tells an agent, over one long-lived stream, that
//! the registration entries it is authorized for changed, or the bundle of a trust domain
//! they federate with did, so it syncs at once instead of at its next periodic sync. The
//! stream follows this replica's views: an entry change is checked against the parent IDs
//! the agent's authorization depends on, and only a change to the agent's authorized entries
//! (their ids or revisions) is sent; a federated bundle change is sent when the agent's
//! entries federate with that trust domain.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use proto::agent_push as pb;
use proto::agent_push::entry_notifications_server::EntryNotifications;
use proto::reason::Reason;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::ApiContext;
use crate::cluster::runtime::Member;

/// Streams one agent may hold open at once (a restart may briefly overlap its last one).
const STREAMS_PER_AGENT: usize = 4;

pub struct EntryNotificationService {
    context: ApiContext,
    /// Open streams per agent SPIFFE ID.
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl EntryNotificationService {
    pub fn new(context: ApiContext) -> Self {
        Self { context, open: Arc::default() }
    }
}

/// Counts one open stream of an agent; uncounts it when dropped.
struct OpenStream {
    open: Arc<Mutex<HashMap<String, usize>>>,
    agent: String,
}

impl OpenStream {
    fn take(open: &Arc<Mutex<HashMap<String, usize>>>, agent: &str) -> Option<Self> {
        let mut counts = open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(agent.to_owned()).or_default();
        if *count >= STREAMS_PER_AGENT {
            return None;
        }
        *count += 1;
        Some(Self { open: open.clone(), agent: agent.to_owned() })
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.agent) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.agent);
            }
        }
    }
}

/// What an agent's authorization looks like: each entry id with the revision that last
/// wrote it, the parent IDs it depends on, and the trust domains its entries federate with.
struct Authorization {
    entries: BTreeMap<String, i64>,
    parents: BTreeSet<String>,
    federated: BTreeSet<String>,
}

#[tonic::async_trait]
impl EntryNotifications for EntryNotificationService {
    type WatchAuthorizedEntriesStream = ReceiverStream<Result<pb::AuthorizedEntriesChanged, Status>>;

    async fn watch_authorized_entries(
        &self,
        request: Request<pb::WatchAuthorizedEntriesRequest>,
    ) -> Result<Response<Self::WatchAuthorizedEntriesStream>, Status> {
        let agent = super::agent_auth::require_agent(&request, &self.context).await?;
        let agent_id = agent.spiffe_id.to_string();
        let open = OpenStream::take(&self.open, &agent_id).ok_or_else(|| {
            Reason::RateLimited.status(
                Code::ResourceExhausted,
                format!("agent {agent_id} already holds {STREAMS_PER_AGENT} notification streams"),
            )
        })?;
        let member = self.context.current().await?;
        let server_id = self.context.server_id()?;
        // Subscribed before the first look, so no change after it is missed.
        let changes = member.views.entry_changes();
        let federated = member.views.federated_changes();
        let mut phases = self.context.runtime.phases();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let _open = open;
            // The stream holds the member: it ends when the replica leaves that phase
            // (shutdown), so it never keeps a stopping replica alive.
            tokio::select! {
                () = watch(member, agent_id, server_id, changes, federated, tx) => {}
                _ = phases.changed() => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the current revision, then one message per change of the agent's authorization,
/// until the agent goes away, is evicted or banned, or the replica stops.
async fn watch(
    member: Arc<Member>,
    agent_id: String,
    server_id: identity::SpiffeId,
    mut changes: broadcast::Receiver<crate::views::EntriesChanged>,
    mut federated: broadcast::Receiver<crate::views::FederatedBundlesChanged>,
    tx: mpsc::Sender<Result<pb::AuthorizedEntriesChanged, Status>>,
) {
    let views = &member.views;
    let look = || -> Result<Authorization, Status> {
        let agent = super::agent_auth::attested_agent(views, &agent_id)?;
        let (authorized, mut parents) = views
            .entries()
            .authorized_with_parents(&agent, &server_id, time::OffsetDateTime::now_utc().unix_timestamp())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        parents.insert(server_id.to_string());
        let federated =
            authorized.values().flat_map(|e| e.federates_with.iter().map(|td| td.name().to_owned())).collect();
        let entries = authorized.into_iter().map(|(id, e)| (id, e.revision_number)).collect();
        Ok(Authorization { entries, parents, federated })
    };
    let mut current = match look() {
        Ok(current) => current,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    if tx.send(Ok(pb::AuthorizedEntriesChanged { revision: views.revision() })).await.is_err() {
        return;
    }
    metrics::gauge!("testudo_entry_notification_streams").increment(1.0);
    loop {
        let change = tokio::select! {
            change = changes.recv() => Ok(change),
            bundle = federated.recv() => Err(bundle),
            () = tx.closed() => break,
        };
        let revision = match change {
            Ok(Ok(change)) => {
                let touches = change.parents.as_ref().is_none_or(|p| p.iter().any(|p| current.parents.contains(p)));
                if !touches {
                    continue;
                }
                change.revision
            }
            // A federated bundle the agent's workloads are served changed: tell the agent,
            // whose sync fetches it.
            Err(Ok(bundle)) => {
                if !bundle.touches(&current.federated) {
                    continue;
                }
                metrics::counter!("testudo_entry_notifications_total").increment(1);
                match tx.try_send(Ok(pb::AuthorizedEntriesChanged { revision: bundle.revision })) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            // Fell behind: look again, whatever changed.
            Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(Err(broadcast::error::RecvError::Lagged(_))) => {
                views.revision()
            }
            Ok(Err(broadcast::error::RecvError::Closed)) | Err(Err(broadcast::error::RecvError::Closed)) => break,
        };
        let next = match look() {
            Ok(next) => next,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                break;
            }
        };
        let changed = next.entries != current.entries;
        current = next;
        if changed {
            metrics::counter!("testudo_entry_notifications_total").increment(1);
            // One message waits at most; a newer change finds it there and the agent's sync
            // covers both.
            match tx.try_send(Ok(pb::AuthorizedEntriesChanged { revision })) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    }
    metrics::gauge!("testudo_entry_notification_streams").decrement(1.0);
}
