//! The server's API requests as a caller can send them: the first byte picks a SPIRE API
//! request message, the rest is decoded as that message (what tonic does with a request
//! body) and handed to the checks and conversions the handlers run before any state is
//! touched. None may panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::spire::api::server::agent::v1 as agent;
use proto::spire::api::server::bundle::v1 as bundle;
use proto::spire::api::server::entry::v1 as entry;
use proto::spire::api::server::localauthority::v1 as local_authority;
use proto::spire::api::server::svid::v1 as svid;
use server::api::convert::{bundle_from_pb, jwt_key_checked, spiffe_id_from_pb};
use server::api::entry::{apply_update, check_entry_id, check_workload_id, entry_from_pb, EntryFilter};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let Ok(td) = identity::TrustDomain::parse("example.org") else { return };
    match which % 16 {
        0 => {
            if let Ok(request) = entry::BatchCreateEntryRequest::decode(bytes) {
                for e in &request.entries {
                    let _ = check_entry_id(&e.id);
                    let _ = entry_from_pb(e, &td, "fuzz".into(), 0);
                }
            }
        }
        1 => {
            if let Ok(request) = entry::BatchUpdateEntryRequest::decode(bytes) {
                for e in &request.entries {
                    if let Ok(stored) = entry_from_pb(e, &td, "fuzz".into(), 0) {
                        let _ = apply_update(&stored, e, request.input_mask.as_ref(), &td);
                    }
                }
            }
        }
        2 => {
            if let Ok(request) = entry::ListEntriesRequest::decode(bytes) {
                let _ = EntryFilter::from_pb(request.filter.as_ref());
            }
        }
        3 => {
            if let Ok(request) = entry::CountEntriesRequest::decode(bytes) {
                let _ = EntryFilter::from_count_pb(request.filter);
            }
        }
        4 => {
            if let Ok(request) = entry::BatchDeleteEntryRequest::decode(bytes) {
                for id in &request.ids {
                    let _ = check_entry_id(id);
                }
            }
        }
        5 => {
            if let Ok(request) = bundle::BatchSetFederatedBundleRequest::decode(bytes) {
                for b in &request.bundle {
                    let _ = bundle_from_pb(b, "bundle");
                }
            }
        }
        6 => {
            if let Ok(request) = bundle::BatchCreateFederatedBundleRequest::decode(bytes) {
                for b in &request.bundle {
                    let _ = bundle_from_pb(b, "bundle");
                }
            }
        }
        7 => {
            if let Ok(request) = bundle::AppendBundleRequest::decode(bytes) {
                for key in &request.jwt_authorities {
                    let _ = jwt_key_checked(key, "jwt_authorities");
                }
                for cert in &request.x509_authorities {
                    let _ = identity::x509::certificate_facts(&cert.asn1);
                }
            }
        }
        8 => {
            if let Ok(request) = bundle::PublishJwtAuthorityRequest::decode(bytes) {
                if let Some(key) = &request.jwt_authority {
                    let _ = jwt_key_checked(key, "jwt_authority");
                }
            }
        }
        9 => {
            if let Ok(request) = svid::BatchNewX509svidRequest::decode(bytes) {
                for param in &request.params {
                    let _ = check_entry_id(&param.entry_id);
                    let _ = identity::x509::public_key_from_csr(&param.csr);
                }
            }
        }
        10 => {
            if let Ok(request) = svid::NewDownstreamX509caRequest::decode(bytes) {
                let _ = identity::x509::public_key_from_csr(&request.csr);
            }
        }
        11 => {
            if let Ok(request) = svid::MintX509svidRequest::decode(bytes) {
                let _ = identity::x509::public_key_from_csr(&request.csr);
            }
        }
        12 => {
            if let Ok(request) = svid::MintJwtsvidRequest::decode(bytes) {
                if let Ok(id) = spiffe_id_from_pb(request.id.as_ref(), "id") {
                    let _ = check_workload_id(&id, &td, "id");
                }
            }
        }
        13 => {
            if let Ok(request) = agent::CreateJoinTokenRequest::decode(bytes) {
                let _ = server::node_attestor::join_token::check_token(&request.token);
                if let Ok(id) = spiffe_id_from_pb(request.agent_id.as_ref(), "agent_id") {
                    let _ = check_workload_id(&id, &td, "agent_id");
                }
            }
        }
        14 => {
            if let Ok(request) = agent::AttestAgentRequest::decode(bytes) {
                if let Some(agent::attest_agent_request::Step::Params(params)) = request.step {
                    if let Some(data) = params.data {
                        if let Ok(token) = std::str::from_utf8(&data.payload) {
                            let _ = server::node_attestor::join_token::check_token(token);
                        }
                    }
                    if let Some(p) = params.params {
                        let _ = identity::x509::public_key_from_csr(&p.csr);
                    }
                }
            }
        }
        _ => {
            let _ = agent::DeleteAgentRequest::decode(bytes).map(|r| spiffe_id_from_pb(r.id.as_ref(), "id"));
            let _ = local_authority::ActivateX509AuthorityRequest::decode(bytes);
            let _ = local_authority::TaintX509UpstreamAuthorityRequest::decode(bytes);
        }
    }
});
