//! The bundle document the endpoint serves: this trust domain's replicated bundle in the
//! SPIFFE bundle format, rendered once per change of the bundle (not per request), with the
//! configured refresh hint. Every replica renders it from the same replicated bundle, so
//! each answers the same bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::cluster::runtime::ClusterRuntime;

/// The current document; `None` until this replica belongs to a cluster with a CA.
pub type Document = watch::Receiver<Option<Bytes>>;

/// Renders the document whenever the replicated bundle changes, until the runtime stops.
pub fn follow(runtime: Arc<ClusterRuntime>, refresh_hint: Duration) -> (Document, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        runtime
            .for_each_member(|member| {
                let tx = tx.clone();
                async move {
                    let mut changes = member.views.signing_changes();
                    let mut sequence = None;
                    loop {
                        let signing = changes.borrow_and_update().clone();
                        if let Some(signing) = signing {
                            let stored = signing.stored_bundle();
                            if sequence != Some(stored.sequence_number) && !stored.x509_authorities.is_empty() {
                                match signing.bundle() {
                                    Ok(mut bundle) => {
                                        bundle.refresh_hint = Some(refresh_hint.as_secs());
                                        tx.send_replace(Some(Bytes::from(bundle.to_spiffe_json())));
                                        sequence = Some(stored.sequence_number);
                                        metrics::gauge!("testudo_bundle_endpoint_sequence")
                                            .set(stored.sequence_number as f64);
                                    }
                                    Err(e) => tracing::error!(error = %e, "the local bundle cannot be served"),
                                }
                            }
                        }
                        if changes.changed().await.is_err() {
                            return;
                        }
                    }
                }
            })
            .await;
    });
    (rx, task)
}
