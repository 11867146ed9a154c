//! wgprov turns an inventory of sites and nodes into one Kubernetes cluster spread over many
//! regions, joined by WireGuard: address plan, peer graph, per-node files, pushed over SSH.
//!
//! The flow is visible in the modules: [`inventory`] (YAML, validation, lock file) →
//! [`topology`] (addresses, peers, keys) → [`desired`] (files per host, from [`roles`]) — all
//! pure and offline — then the parts that touch hosts. [`facts`] holds the parsers that read
//! what a host has; [`peering`] exchanges cards with sites someone else runs.
#![deny(missing_docs)]

pub mod apply;
pub mod cli;
pub mod desired;
pub mod diff;
pub mod error;
pub mod facts;
pub mod fleet;
pub mod formats;
pub mod hosts;
pub mod inventory;
pub mod keys;
pub mod lab;
pub mod output;
pub mod peering;
pub mod plan;
pub mod probe;
pub mod roles;

pub mod shell;
pub mod status;
pub mod topology;
pub mod transport;

pub use error::{Error, Result};
