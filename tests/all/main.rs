//! The one integration-test binary: real servers on loopback ports, real redb
//! files in temp dirs, real HTTP sinks started by the tests.

#![allow(
    unreachable_pub,
    dead_code,
    reason = "test support is shared across modules"
)]

mod api;
mod central;
mod cli;
mod cluster;
mod crash;
mod dashboard;
mod delivery;
mod keys;
mod languages;
mod leases;
mod openapi;
mod ops;
mod pg;
mod plugins;
mod postgres;
mod quota;
mod recovery;
mod replay;
mod schedules;
mod security;
mod simulation;
mod store;
mod support;
mod tidy;
mod unit_leases;
