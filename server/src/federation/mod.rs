//! SPIFFE Federation: the bundle endpoint every replica serves ([`endpoint`]), the document
//! it serves ([`document`]), the web PKI certificate it may present ([`web_cert`]), and
//! fetching partners' bundles from their endpoints ([`fetch`]). docs/federation.md
//! describes them.

pub mod document;
pub mod endpoint;
pub mod fetch;
pub mod web_cert;
