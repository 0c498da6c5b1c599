//! Real server processes forming a cluster through the CLI (with memory keys, and with keys on
//! one SoftHSM2 token); the CA manager driven by a fake clock through many rotations, resumed from its journal,
//! and with a disk upstream authority, checked by identity's verifiers and openssl; the views
//! that follow apply; stock gRPC clients (grpcio) on the admin socket; a data dir of the
//! previous on-disk format, upgraded on start; replicas that form or join a declared
//! cluster by themselves.

mod authorization;
mod bundle_endpoint;
mod bundle_fetch;
mod ca_rotation;
mod cluster_ca;
mod cluster_ca_rotation;
mod cluster_processes;
mod declared_formation;
mod deploy_files;
mod federation_api;
mod federation_refresh;
mod hostile_callers;
mod kubernetes_pods;
mod managed_keys;
mod request_ids;
mod stock_clients;
mod upgrade;
mod upstream_disk;
mod views;
mod x509pop;
