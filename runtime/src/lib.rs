//! Sluice: a self-hosted task scheduler whose gates never let a backlog flood an
//! endpoint. See ARCHITECTURE.md for the map.
//!
//! # Layers
//!
//! Lowest first. A module imports from layers below its own and never from its
//! own layer or above; `tests/all/tidy.rs` reads this list and checks every file.
//!
//! 1. `core`: the pure decisions (gates, the scheduler, retries, time).
//! 2. `clock` `hex` `store`: the one real clock; lowercase hex; the redb
//!    tables and records.
//! 3. `model` `attempt`: validated requests for the shell; an attempt's plan
//!    and report between the shell and the executors.
//! 4. `dispatch`: webhook attempts, the outgoing-address guard.
//! 5. `plugin`: the WebAssembly host, whose requests go out through `dispatch`.
//! 6. `shell`: the engine and its runner: every write, the core's effects.
//! 7. `cluster`: who owns which gates when several nodes share PostgreSQL,
//!    and the balance that hands units to and from the engine.
//! 8. `api`: the REST API, its wire format and the dashboard.
//! 9. `config` `client`: settings from flags, environment and file; the
//!    typed client of the REST API that the CLI, the bench and the tests use.
//! 10. `server`: wiring a running server together.
//! 11. `bench` `fuzzing`: `sluice bench`; the properties the fuzz targets
//!     check, which the tests also run over the fuzz seeds.
//! 12. `cli`: the command line.

pub mod api;
pub mod attempt;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod dispatch;
#[doc(hidden)]
pub mod fuzzing;
pub mod hex;
pub mod model;
pub mod plugin;
pub mod server;
pub mod shell;
pub mod store;
