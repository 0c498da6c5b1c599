//! The shared in-process cluster helper.

pub use raft_store::testing::*;
