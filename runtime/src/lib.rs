//! Sluice: a self-hosted task scheduler whose gates never let a backlog flood an
//! endpoint. See ARCHITECTURE.md for the map.

pub mod api;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod model;
pub mod plugin;
pub mod server;
pub mod shell;
pub mod store;
