//! SPIFFE Federation: the bundle endpoint every replica serves ([`endpoint`]), the document
//! it serves ([`document`]), and the web PKI certificate it may present ([`web_cert`]).
//! docs/federation.md describes them.

pub mod document;
pub mod endpoint;
pub mod web_cert;
