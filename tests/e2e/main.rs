//! The end-to-end suite: one test binary, real controllers (in-process on loopback or
//! as `mezzanine` processes) driven only through the public API and CLI.

mod agents;
mod auth;
mod cli;
mod cluster;
mod contract;
mod conventions;
mod database;
mod deploys;
mod docker;
mod events;
mod history;
mod https;
mod limits;
mod nodes;
mod notify;
mod panel;
mod pools;
mod providers;
mod roles;
mod runs;
mod schedules;
mod tokens;
mod upgrades;
