//! Admin services on the local Unix socket: today the cluster commands; the SPIRE admin
//! APIs join them as they are built.

pub mod cluster;
