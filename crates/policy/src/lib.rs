//! `tarmac-policy`: what a workload's inbound policies mean, compiled once per update and
//! evaluated per request or connection: who may call ([`authz`]), how often ([`limit`]).
//!
//! Policies arrive in the discovery contract's shape ([`tarmac_proto::discovery::InboundPort`]).
//! The proxy enforces them (`crates/proxy/src/inbound/policy.rs`); the model validates
//! what users write with the same [`cidr`] parser. Nothing here reads a clock or a socket:
//! callers pass the client and the time, so every rule is tested without either.
//!
//! # Layout
//! - [`cidr`]: address ranges.
//! - [`authz`]: clients, ALLOW and DENY policies, the default policy, and the decision.
//! - [`limit`]: GCRA rate limits in total, per caller, and per named caller.

pub mod authz;
pub mod cidr;
pub mod limit;

pub use authz::{Authorizations, Client, Decision};
pub use cidr::Cidr;
pub use limit::{Limited, RateLimit};
