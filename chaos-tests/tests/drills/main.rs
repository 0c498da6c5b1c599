//! Bounded failure drills against real replica processes (the short suite `make test` runs).
//! Each records every client operation and checks afterwards that no acknowledged write was
//! lost and that every entry's history is linearizable.

mod leader_kill;
mod leader_pause;
mod rolling_restart;
mod workload;
