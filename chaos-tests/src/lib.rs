//! Failure drills and benchmarks with real processes. [`harness`] starts and stops
//! `testudo-server` replicas and `testudo-agent`s; the drills and the history checker
//! arrive with the chaos issue.
#![forbid(unsafe_code)]

pub mod harness;
