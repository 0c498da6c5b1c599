//! The Testudo server. Today: the CA — rotation decisions as pure functions of time and
//! state, the CA journal they act on, and the manager that carries them out — and the
//! `disk` upstream authority. Later issues add the APIs, attestation and clustering.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod ca;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod federation;
pub mod leader;
pub mod node_attestor;
pub mod ops;
pub mod upstream;
pub mod views;
