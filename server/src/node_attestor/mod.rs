//! Node attestors, one module each: how an agent proves which node it runs on. `join_token`
//! lives with the agent API (a token consumed through Raft); `x509pop` is here.

pub mod x509pop;
