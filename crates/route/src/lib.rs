//! Gateway API HTTPRoute and GRPCRoute semantics, shared by the proxy (which applies them
//! per request) and the control plane (which explains them to users): matching and its
//! precedence, filters, weighted backends. One implementation, so that what `tarmac
//! routes` says is what proxies do.
//!
//! Routes arrive in the discovery contract's shape ([`tarmac_proto::discovery::Route`]);
//! [`RouteTable::build`] compiles them once per update and requests only match, filter
//! and pick. The table is generic over what its user keeps for a backend Service port:
//! the proxy a balancer, tools nothing.
//!
//! # Layout
//! - [`table`]: the compiled routes of one Service port, rules and backends.
//! - [`matching`]: matches and their precedence.
//! - [`filters`]: header modifiers, redirects, rewrites, mirrors, CORS, faults.
//! - [`policy`]: a rule's retry policy.
//! - [`path`]: request paths in canonical form, before matching.

pub mod filters;
pub mod matching;
pub mod path;
pub mod policy;
pub mod table;

pub use filters::{Filters, RequestFilter, ResponseFilter};
pub use matching::{MatchSummary, RequestMatch, ValueSummary};
pub use policy::Retry;
pub use table::{Backend, CompileError, RouteError, RouteTable, Rule, Target};
