//! The sync loop: every `sync_interval` the agent fetches its trust bundle, syncs its
//! authorized entries by revision (SyncAuthorizedEntries: only changed entries travel),
//! fetches the bundles of the trust domains those entries federate with,
//! mints X.509-SVIDs for new entries and for those past half-life (±10%), or signed by an
//! authority that was tainted, in batches (BatchNewX509SVID), and renews its own SVID at
//! half-life. Every server call goes through the pool, so any replica serves it. A failed
//! pass changes nothing: the cache keeps serving what it has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use identity::bundle::{Bundle, JwtAuthority};
use identity::crypto::{KeyType, LocalKey, PublicKey};
use identity::x509::{certificate_facts, create_csr};
use identity::{Selector, SelectorSet, SpiffeId, TrustDomain};
use proto::spire::api::server::bundle::v1 as bundle_pb;
use proto::spire::api::server::entry::v1 as entry_pb;
use proto::spire::api::server::svid::v1 as svid_pb;
use proto::spire::api::types;
use time::OffsetDateTime;
use tonic::Status;
use zeroize::Zeroizing;

use crate::cache::{Cache, Entry, Snapshot, WorkloadSvid};
use server_pool::{Hedge, ServerPool};

/// Items per BatchNewX509SVID call (the server's limit).
const MINT_BATCH: usize = 500;
/// Ids per SyncAuthorizedEntries follow-up request.
const IDS_PER_REQUEST: usize = 500;

/// Converts the bundle the server serves.
pub fn bundle_from_pb(pb: &types::Bundle) -> Result<Bundle, String> {
    let trust_domain =
        TrustDomain::parse(&pb.trust_domain).map_err(|e| format!("bundle trust domain {:?}: {e}", pb.trust_domain))?;
    let mut bundle = Bundle::new(trust_domain);
    for (i, authority) in pb.x509_authorities.iter().enumerate() {
        bundle.add_x509_authority(&authority.asn1).map_err(|e| format!("x509_authorities[{i}]: {e}"))?;
        if authority.tainted {
            bundle.taint_x509_authority(&authority.asn1);
        }
    }
    for (i, key) in pb.jwt_authorities.iter().enumerate() {
        let public_key = PublicKey::from_spki_der(&key.public_key).map_err(|e| format!("jwt_authorities[{i}]: {e}"))?;
        let expires_at = (key.expires_at != 0).then_some(key.expires_at);
        bundle
            .add_jwt_authority(JwtAuthority {
                key_id: key.key_id.clone(),
                public_key,
                expires_at,
                tainted: key.tainted,
            })
            .map_err(|e| format!("jwt_authorities[{i}]: {e}"))?;
    }
    bundle.refresh_hint = u64::try_from(pb.refresh_hint).ok().filter(|h| *h > 0);
    bundle.sequence_number = pb.sequence_number;
    Ok(bundle)
}

fn spiffe_id_from_pb(id: Option<&types::Spiffeid>) -> Result<SpiffeId, String> {
    let id = id.ok_or("missing SPIFFE ID")?;
    let trust_domain = TrustDomain::parse(&id.trust_domain).map_err(|e| e.to_string())?;
    SpiffeId::new(trust_domain, &id.path).map_err(|e| e.to_string())
}

/// Converts an entry the server sent; `None` (logged) for one the agent cannot use.
fn entry_from_pb(pb: &types::Entry) -> Option<Entry> {
    let convert = || -> Result<Entry, String> {
        let spiffe_id = spiffe_id_from_pb(pb.spiffe_id.as_ref())?;
        let selectors: SelectorSet = pb
            .selectors
            .iter()
            .map(|s| Selector::new(&s.r#type, &s.value).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let federates_with = pb
            .federates_with
            .iter()
            .map(|td| TrustDomain::parse(td.trim_start_matches("spiffe://")).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Entry {
            id: pb.id.clone(),
            spiffe_id,
            selectors,
            x509_svid_ttl: pb.x509_svid_ttl,
            jwt_svid_ttl: pb.jwt_svid_ttl,
            federates_with,
            hint: pb.hint.clone(),
            revision_number: pb.revision_number,
        })
    };
    convert().map_err(|e| tracing::warn!(entry = %pb.id, error = %e, "ignoring an entry the agent cannot use")).ok()
}

/// The trust bundle of our trust domain, from any replica.
pub async fn fetch_bundle(pool: &ServerPool) -> Result<Bundle, Status> {
    let pb = pool
        .call(2, Hedge::Allowed, |channel| async move {
            let mut client = bundle_pb::bundle_client::BundleClient::new(channel);
            Ok(client.get_bundle(bundle_pb::GetBundleRequest { output_mask: None }).await?.into_inner())
        })
        .await?;
    bundle_from_pb(&pb).map_err(|e| Status::internal(format!("the server sent a bad bundle: {e}")))
}

/// The bundles of the trust domains `entries` federate with, from any replica; a trust
/// domain the servers hold no bundle for is left out (and logged).
pub async fn fetch_federated(
    pool: &ServerPool,
    entries: &BTreeMap<String, Entry>,
) -> Result<BTreeMap<TrustDomain, Bundle>, Status> {
    let wanted: BTreeSet<TrustDomain> = entries.values().flat_map(|e| e.federates_with.iter().cloned()).collect();
    let mut bundles = BTreeMap::new();
    for td in wanted {
        let name = td.name().to_owned();
        let answer = pool
            .call(2, Hedge::Allowed, |channel| {
                let name = name.clone();
                async move {
                    let mut client = bundle_pb::bundle_client::BundleClient::new(channel);
                    Ok(client
                        .get_federated_bundle(bundle_pb::GetFederatedBundleRequest {
                            trust_domain: name,
                            output_mask: None,
                        })
                        .await?
                        .into_inner())
                }
            })
            .await;
        match answer {
            Ok(pb) => match bundle_from_pb(&pb) {
                Ok(bundle) if *bundle.trust_domain() == td => {
                    bundles.insert(td, bundle);
                }
                Ok(bundle) => {
                    tracing::warn!(asked = %td, got = %bundle.trust_domain(), "the server sent another trust domain's bundle")
                }
                Err(e) => {
                    tracing::warn!(trust_domain = %td, error = %e, "ignoring a federated bundle the agent cannot read")
                }
            },
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::debug!(trust_domain = %td, "no federated bundle for this trust domain yet")
            }
            Err(status) => return Err(status),
        }
    }
    Ok(bundles)
}

/// The authorized entries now, given those the agent has: the server sends every entry's
/// revision (or, for few entries, the entries themselves); the agent asks only for the
/// ones that are new or changed.
pub async fn sync_entries(
    pool: &ServerPool,
    known: &BTreeMap<String, Entry>,
) -> Result<BTreeMap<String, Entry>, Status> {
    pool.call(2, Hedge::Allowed, |channel| async move {
        let mut client = entry_pb::entry_client::EntryClient::new(channel);
        let (requests, stream) = tokio::sync::mpsc::channel(4);
        let first = entry_pb::SyncAuthorizedEntriesRequest { output_mask: None, ids: vec![] };
        requests.send(first).await.map_err(|_| Status::internal("sync request channel closed"))?;
        let mut answers =
            client.sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(stream)).await?.into_inner();
        let mut revisions: BTreeMap<String, i64> = BTreeMap::new();
        let mut fresh: BTreeMap<String, Entry> = BTreeMap::new();
        loop {
            let answer = answers
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("the server ended the sync stream early"))?;
            revisions.extend(answer.entry_revisions.into_iter().map(|r| (r.id, r.revision_number)));
            for pb in &answer.entries {
                revisions.insert(pb.id.clone(), pb.revision_number);
                if let Some(entry) = entry_from_pb(pb) {
                    fresh.insert(entry.id.clone(), entry);
                }
            }
            if !answer.more {
                break;
            }
        }
        let wanted: Vec<String> = revisions
            .iter()
            .filter(|(id, revision)| {
                !fresh.contains_key(*id) && known.get(*id).is_none_or(|e| e.revision_number != **revision)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for ids in wanted.chunks(IDS_PER_REQUEST) {
            requests
                .send(entry_pb::SyncAuthorizedEntriesRequest { output_mask: None, ids: ids.to_vec() })
                .await
                .map_err(|_| Status::unavailable("the server ended the sync stream early"))?;
            loop {
                let answer = answers
                    .message()
                    .await?
                    .ok_or_else(|| Status::unavailable("the server ended the sync stream early"))?;
                fresh.extend(answer.entries.iter().filter_map(entry_from_pb).map(|e| (e.id.clone(), e)));
                if !answer.more {
                    break;
                }
            }
        }
        drop(requests);
        Ok(revisions
            .keys()
            .filter_map(|id| fresh.get(id).or_else(|| known.get(id)).map(|e| (id.clone(), e.clone())))
            .collect())
    })
    .await
}

/// Whether an SVID must be replaced now: its entry changed, it is past its renewal time,
/// or an authority in its chain was tainted.
fn needs_mint(entry: &Entry, svid: Option<&WorkloadSvid>, bundle: &Bundle, now: OffsetDateTime) -> bool {
    let Some(svid) = svid else { return true };
    let tainted =
        svid.chain.iter().skip(1).any(|der| bundle.x509_authorities().iter().any(|a| a.tainted && a.der == *der))
            || bundle.x509_authorities().iter().filter(|a| a.tainted).any(|a| signed_by(&svid.chain, &a.der));
    svid.entry_revision != entry.revision_number || now >= svid.renew_at || svid.spiffe_id != entry.spiffe_id || tainted
}

/// Whether the chain's last certificate was issued by `authority` (by subject name).
fn signed_by(chain: &[Vec<u8>], authority: &[u8]) -> bool {
    let (Some(last), Ok((_, authority))) = (chain.last(), x509_parser::parse_x509_certificate(authority)) else {
        return false;
    };
    x509_parser::parse_x509_certificate(last).is_ok_and(|(_, cert)| cert.issuer() == authority.subject())
}

/// When to renew a credential that arrived at `received` (this agent's clock), `age` old
/// then, living `life` in all: half-way through its life, jittered ±10% so the renewals of
/// many SVIDs spread out. Counted from its arrival on this agent's clock, not from the
/// issuer's timestamps: an agent whose clock is minutes off the servers' neither renews
/// late nor on every pass.
pub fn renewal_time(received: OffsetDateTime, age: time::Duration, life: time::Duration) -> OffsetDateTime {
    let factor = 0.5 * (0.9 + fastrand::f64() * 0.2);
    received - age + life * factor
}

/// [`renewal_time`] for an X.509-SVID a server minted just now: it backdates NotBefore.
pub fn x509_renewal_time(received: OffsetDateTime, facts: &identity::x509::CertificateFacts) -> OffsetDateTime {
    let life = facts.not_after - facts.not_before;
    let age = time::Duration::try_from(identity::x509::BACKDATE).unwrap_or(time::Duration::ZERO).min(life);
    renewal_time(received, age, life)
}

/// Mints SVIDs for `entries` in batches; each item succeeds or fails alone.
async fn mint(pool: &ServerPool, entries: Vec<Entry>) -> Result<Vec<(String, WorkloadSvid)>, Status> {
    let mut minted = Vec::new();
    for batch in entries.chunks(MINT_BATCH) {
        let batch = batch.to_vec();
        // Key generation for hundreds of entries is CPU work: off the reactor.
        let keyed = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|entry| {
                    let key = LocalKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
                    let csr = create_csr(&key, None).map_err(|e| e.to_string())?;
                    let pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
                    Ok((entry, Zeroizing::new(pkcs8.to_vec()), csr))
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(format!("cannot make workload keys: {e}")))?;
        let params: Vec<svid_pb::NewX509svidParams> = keyed
            .iter()
            .map(|(entry, _, csr)| svid_pb::NewX509svidParams { entry_id: entry.id.clone(), csr: csr.clone() })
            .collect();
        let results = pool
            .call(2, Hedge::Allowed, |channel| {
                let params = params.clone();
                async move {
                    let mut client = svid_pb::svid_client::SvidClient::new(channel);
                    Ok(client
                        .batch_new_x509svid(svid_pb::BatchNewX509svidRequest { params })
                        .await?
                        .into_inner()
                        .results)
                }
            })
            .await?;
        let received = OffsetDateTime::now_utc();
        for ((entry, key_pkcs8, _), result) in keyed.into_iter().zip(results) {
            let status = result.status.unwrap_or_default();
            let Some(svid) = result.svid.filter(|_| status.code == 0) else {
                tracing::warn!(entry = %entry.id, code = status.code, message = %status.message, "the server did not mint an SVID for this entry");
                continue;
            };
            let Some(facts) = svid.cert_chain.first().and_then(|leaf| certificate_facts(leaf).ok()) else {
                tracing::warn!(entry = %entry.id, "the server sent an unreadable SVID");
                continue;
            };
            let svid = WorkloadSvid {
                spiffe_id: entry.spiffe_id.clone(),
                chain: svid.cert_chain,
                key_pkcs8,
                issued_at: facts.not_before,
                expires_at: facts.not_after,
                renew_at: x509_renewal_time(received, &facts),
                entry_revision: entry.revision_number,
            };
            minted.push((entry.id.clone(), svid));
        }
    }
    Ok(minted)
}

/// One sync pass: bundle, entries, SVIDs; the cache is replaced once, at the end.
pub async fn sync_once(pool: &ServerPool, cache: &Cache, trust: &Arc<RwLock<Bundle>>) -> Result<SyncReport, Status> {
    let bundle = fetch_bundle(pool).await?;
    if let Ok(mut shared) = trust.write() {
        *shared = bundle.clone();
    }
    let current: Arc<Snapshot> = cache.current();
    let entries = sync_entries(pool, &current.entries).await?;
    let federated = fetch_federated(pool, &entries).await?;
    let now = OffsetDateTime::now_utc();
    let due: Vec<Entry> =
        entries.values().filter(|e| needs_mint(e, current.svids.get(&e.id), &bundle, now)).cloned().collect();
    let minted = if due.is_empty() { Vec::new() } else { mint(pool, due).await? };
    let report = SyncReport { entries: entries.len(), minted: minted.len() };
    // Every Workload API stream wakes on an update: skip it when nothing changed.
    let unchanged = minted.is_empty()
        && current.bundle.as_ref() == Some(&bundle)
        && current.federated == federated
        && current.entries == entries
        && current.svids.keys().all(|id| entries.contains_key(id));
    if unchanged {
        return Ok(report);
    }
    let live: BTreeSet<String> = entries.keys().cloned().collect();
    cache.update(|snapshot| {
        snapshot.bundle = Some(bundle);
        snapshot.federated = federated;
        snapshot.entries = entries;
        snapshot.svids.retain(|id, _| live.contains(id));
        snapshot.svids.extend(minted);
    });
    Ok(report)
}

/// What a sync pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    pub entries: usize,
    pub minted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_counted_on_the_agents_clock_from_arrival() {
        let received = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let (age, life) = (time::Duration::seconds(10), time::Duration::seconds(70));
        for _ in 0..100 {
            let at = renewal_time(received, age, life);
            // Half of 70 s, ±10%, from 10 s before arrival.
            assert!(at >= received + time::Duration::milliseconds(21_500), "{at}");
            assert!(at <= received + time::Duration::milliseconds(28_500), "{at}");
        }
    }
}
