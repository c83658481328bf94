//! What keeps one failing service from taking its callers down with it.
//!
//! - [`budget`]: the retry budget, on for every service: retries add at most a share of
//!   the load.
//! - [`retry`]: the tries of one request, retried only when safe and within the budget.
//! - [`breaker`]: endpoints that fail requests in a row are ejected, then probed.
//! - [`deadline`]: a request's deadline, from its route and its gRPC caller.

pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod retry;

#[cfg(test)]
mod tests;
