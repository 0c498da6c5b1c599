//! `spire.api.server.entry.v1.Entry`: registration entries, created, changed and deleted
//! through Raft in batches with a status per item, and read linearizably.

mod convert;
mod filter;

use proto::spire::api::server::entry::v1 as pb;
use proto::spire::api::server::entry::v1::entry_server::Entry;
use proto::spire::api::types;
use raft_store::command::{CreateEntries, DeleteEntries, UpdateEntries};
use raft_store::model::{EntryWritten, RegistrationEntry};
use raft_store::{ApplyError, StoreReader, Write};
use tonic::{Code, Request, Response, Status};

pub use convert::{apply_update, check_entry_id, check_workload_id, entry_from_pb, entry_to_pb, new_entry_id};
pub use filter::EntryFilter;

use super::{apply_code, item_status, read_failed, ApiContext};

/// Most items one batch call may carry: a batch is one Raft entry.
pub const MAX_BATCH: usize = 500;
/// Entries (or revisions) per SyncAuthorizedEntries message, and the count under which
/// entries are sent without a revision round.
const SYNC_PAGE: usize = 500;
/// Entries read from the store per step while listing.
const SCAN_PAGE: usize = 1000;

pub struct EntryService {
    pub context: ApiContext,
}

fn check_batch(len: usize, what: &str) -> Result<(), Status> {
    if len > MAX_BATCH {
        return Err(Status::invalid_argument(format!("{what}: {len} items; at most {MAX_BATCH} per call")));
    }
    Ok(())
}

impl EntryService {
    /// The entries the calling agent is authorized for, by id, from this replica's state.
    async fn authorized_for_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<
        (std::collections::BTreeMap<String, std::sync::Arc<RegistrationEntry>>, raft_store::model::AttestedAgent),
        Status,
    > {
        let agent = super::agent_auth::require_agent(request, &self.context).await?;
        let authorized = self.context.authorized_entries(&agent).await?;
        Ok((authorized, agent))
    }

    /// Writes the items that passed their checks as one command, and answers every item in
    /// request order: its refusal, or the outcome of the write.
    async fn write_checked<W: Write<Output = Vec<Result<EntryWritten, ApplyError>>>>(
        &self,
        checked: Vec<Result<RegistrationEntry, Status>>,
        command: fn(Vec<RegistrationEntry>) -> W,
        mask: Option<&types::EntryMask>,
    ) -> Result<Vec<(Option<types::Status>, Option<types::Entry>)>, Status> {
        // `entry_from_pb` (every create and update goes through it) normalises, so apply
        // stores these without a copy; the answer names what apply decided, and each item's
        // stored entry is built from ours.
        let valid: Vec<RegistrationEntry> = checked.iter().filter_map(|c| c.as_ref().ok().cloned()).collect();
        let mut written =
            if valid.is_empty() { Vec::new() } else { self.context.write(command(valid)).await? }.into_iter();
        Ok(checked
            .into_iter()
            .map(|item| match item {
                Err(refused) => (item_status(refused.code(), refused.message()), None),
                Ok(proposed) => match written.next() {
                    Some(Ok(written)) => {
                        (item_status(Code::Ok, "OK"), Some(entry_to_pb(&written.stored(proposed), mask)))
                    }
                    Some(Err(e)) => (item_status(apply_code(&e), e.to_string()), None),
                    None => (item_status(Code::Internal, "no outcome for this entry"), None),
                },
            })
            .collect())
    }

    /// Every entry matching `filter`, in id order, after `after`, at most `limit` (0: all).
    /// Returns them and whether more may follow.
    async fn matching(
        reader: &StoreReader,
        filter: &EntryFilter,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<RegistrationEntry>, bool), Status> {
        let mut found = Vec::new();
        // An exact parent or SPIFFE ID filter narrows the scan to an index.
        let indexed = match (&filter.parent_id, &filter.spiffe_id) {
            (Some(parent), _) => Some(reader.entries_by_parent(parent).await.map_err(read_failed)?),
            (None, Some(id)) => Some(reader.entries_by_spiffe_id(id).await.map_err(read_failed)?),
            _ => None,
        };
        if let Some(mut candidates) = indexed {
            candidates.sort_by(|a, b| a.id.cmp(&b.id));
            let mut rest = candidates
                .into_iter()
                .filter(|e| after.as_ref().is_none_or(|a| e.id > *a))
                .filter(|e| filter.matches(e));
            for entry in rest.by_ref() {
                found.push(entry);
                if limit > 0 && found.len() == limit {
                    return Ok((found, rest.next().is_some()));
                }
            }
            return Ok((found, false));
        }
        let mut cursor = after;
        loop {
            let page = reader.list_entries(cursor, SCAN_PAGE).await.map_err(read_failed)?;
            let mut items = page.items.into_iter();
            for entry in items.by_ref() {
                if filter.matches(&entry) {
                    found.push(entry);
                    if limit > 0 && found.len() == limit {
                        return Ok((found, items.next().is_some() || page.next.is_some()));
                    }
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok((found, false)),
            }
        }
    }
}

#[tonic::async_trait]
impl Entry for EntryService {
    async fn count_entries(
        &self,
        request: Request<pb::CountEntriesRequest>,
    ) -> Result<Response<pb::CountEntriesResponse>, Status> {
        let filter = EntryFilter::from_count_pb(request.into_inner().filter)?;
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let (entries, _) = Self::matching(reader, &filter, None, 0).await?;
        Ok(Response::new(pb::CountEntriesResponse { count: i32::try_from(entries.len()).unwrap_or(i32::MAX) }))
    }

    async fn list_entries(
        &self,
        request: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        let request = request.into_inner();
        let filter = EntryFilter::from_pb(request.filter.as_ref())?;
        if request.page_size < 0 {
            return Err(Status::invalid_argument("page_size: must not be negative"));
        }
        let after = Some(request.page_token).filter(|t| !t.is_empty());
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let limit = usize::try_from(request.page_size).unwrap_or(0);
        let (entries, more) = Self::matching(reader, &filter, after, limit).await?;
        let next_page_token =
            if more { entries.last().map(|e| e.id.clone()).unwrap_or_default() } else { String::new() };
        let mask = request.output_mask.as_ref();
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.iter().map(|e| entry_to_pb(e, mask)).collect(),
            next_page_token,
        }))
    }

    async fn get_entry(&self, request: Request<pb::GetEntryRequest>) -> Result<Response<types::Entry>, Status> {
        let request = request.into_inner();
        check_entry_id(&request.id)?;
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let entry = reader
            .entry(&request.id)
            .await
            .map_err(read_failed)?
            .ok_or_else(|| Status::not_found(format!("id: no entry {:?}", request.id)))?;
        Ok(Response::new(entry_to_pb(&entry, request.output_mask.as_ref())))
    }

    async fn batch_create_entry(
        &self,
        request: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        let request = request.into_inner();
        check_batch(request.entries.len(), "entries")?;
        let td = &self.context.ca.config.trust_domain;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Each item is checked on its own; the valid ones go to Raft as one command.
        let checked = request.entries.iter().map(|entry| {
            let id = if entry.id.is_empty() {
                convert::new_entry_id()
            } else {
                check_entry_id(&entry.id).map(|()| entry.id.clone())
            };
            id.and_then(|id| entry_from_pb(entry, td, id, now))
        });
        let results = self.write_checked(checked.collect(), CreateEntries, request.output_mask.as_ref()).await?;
        let results = results
            .into_iter()
            .map(|(status, entry)| pb::batch_create_entry_response::Result { status, entry })
            .collect();
        Ok(Response::new(pb::BatchCreateEntryResponse { results }))
    }

    async fn batch_update_entry(
        &self,
        request: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        let request = request.into_inner();
        check_batch(request.entries.len(), "entries")?;
        let td = &self.context.ca.config.trust_domain;
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let mut checked = Vec::with_capacity(request.entries.len());
        for update in &request.entries {
            checked.push(match check_entry_id(&update.id) {
                Err(status) => Err(status),
                Ok(()) => match reader.entry(&update.id).await.map_err(read_failed)? {
                    None => Err(Status::not_found(format!("id: no entry {:?}", update.id))),
                    Some(stored) => convert::apply_update(&stored, update, request.input_mask.as_ref(), td),
                },
            });
        }
        let results = self.write_checked(checked, UpdateEntries, request.output_mask.as_ref()).await?;
        let results = results
            .into_iter()
            .map(|(status, entry)| pb::batch_update_entry_response::Result { status, entry })
            .collect();
        Ok(Response::new(pb::BatchUpdateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        request: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        let ids = request.into_inner().ids;
        check_batch(ids.len(), "ids")?;
        let mut results: Vec<Option<pb::batch_delete_entry_response::Result>> = Vec::with_capacity(ids.len());
        let mut valid = Vec::new();
        for id in &ids {
            match check_entry_id(id) {
                Ok(()) => {
                    valid.push(id.clone());
                    results.push(None);
                }
                Err(status) => results.push(Some(pb::batch_delete_entry_response::Result {
                    status: item_status(status.code(), status.message()),
                    id: id.clone(),
                })),
            }
        }
        let outcomes =
            if valid.is_empty() { Vec::new() } else { self.context.write(DeleteEntries(valid.clone())).await? };
        let mut outcomes = outcomes.into_iter().zip(valid);
        let results = results
            .into_iter()
            .map(|slot| match slot {
                Some(refused) => refused,
                None => match outcomes.next() {
                    Some((Ok(id), _)) => {
                        pb::batch_delete_entry_response::Result { status: item_status(Code::Ok, "OK"), id }
                    }
                    Some((Err(e), id)) => pb::batch_delete_entry_response::Result {
                        status: item_status(apply_code(&e), e.to_string()),
                        id,
                    },
                    None => pb::batch_delete_entry_response::Result {
                        status: item_status(Code::Internal, "no outcome for this id"),
                        id: String::new(),
                    },
                },
            })
            .collect();
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }

    async fn get_authorized_entries(
        &self,
        request: Request<pb::GetAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::GetAuthorizedEntriesResponse>, Status> {
        let (authorized, _) = self.authorized_for_caller(&request).await?;
        let mask = request.get_ref().output_mask.as_ref();
        Ok(Response::new(pb::GetAuthorizedEntriesResponse {
            entries: authorized.values().map(|e| entry_to_pb(e, mask)).collect(),
        }))
    }

    type SyncAuthorizedEntriesStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::SyncAuthorizedEntriesResponse, Status>>;

    /// SPIRE's sync protocol: under a page of entries, they are sent at once; otherwise
    /// their revisions are paged first, and the agent then asks for the ids it lacks.
    async fn sync_authorized_entries(
        &self,
        request: Request<tonic::Streaming<pb::SyncAuthorizedEntriesRequest>>,
    ) -> Result<Response<Self::SyncAuthorizedEntriesStream>, Status> {
        let (authorized, _) = self.authorized_for_caller(&request).await?;
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before the first request"))?;
        if !first.ids.is_empty() {
            return Err(Status::invalid_argument("ids: the first request carries only the output mask"));
        }
        let mask = first.output_mask;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let send_entries = |entries: Vec<&RegistrationEntry>| {
                let pages: Vec<Vec<types::Entry>> = entries
                    .chunks(SYNC_PAGE)
                    .map(|c| c.iter().map(|e| entry_to_pb(e, mask.as_ref())).collect())
                    .collect();
                let count = pages.len().max(1);
                let mut pages = pages.into_iter();
                (0..count)
                    .map(move |i| pb::SyncAuthorizedEntriesResponse {
                        entry_revisions: vec![],
                        entries: pages.next().unwrap_or_default(),
                        more: i + 1 < count,
                    })
                    .collect::<Vec<_>>()
            };
            let opening = if authorized.len() < SYNC_PAGE {
                send_entries(authorized.values().map(|e| &**e).collect())
            } else {
                let revisions: Vec<pb::EntryRevision> = authorized
                    .values()
                    .map(|e| pb::EntryRevision { id: e.id.clone(), revision_number: e.revision_number })
                    .collect();
                let pages: Vec<_> = revisions.chunks(SYNC_PAGE).map(<[_]>::to_vec).collect();
                let count = pages.len();
                pages
                    .into_iter()
                    .enumerate()
                    .map(|(i, page)| pb::SyncAuthorizedEntriesResponse {
                        entry_revisions: page,
                        entries: vec![],
                        more: i + 1 < count,
                    })
                    .collect()
            };
            for response in opening {
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            // Then the full entries the agent asks for, until it closes the stream.
            loop {
                let ids = match requests.message().await {
                    Ok(Some(request)) => request.ids,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let wanted: Vec<&RegistrationEntry> =
                    ids.iter().filter_map(|id| authorized.get(id)).map(|e| &**e).collect();
                for response in send_entries(wanted) {
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
