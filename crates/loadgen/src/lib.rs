//! `tarmac-loadgen`: the load generator behind `tarmac bench`, built to be trusted when it
//! says how much latency a proxy adds.
//!
//! Two ways to load a target over N connections, in HTTP/1.1, h2c or gRPC:
//!
//! * **Open loop** ([`Load::OpenLoop`]): requests at a constant rate, each due at a fixed
//!   time ([`schedule`]) whatever happened to the ones before it, paced by a timer precise
//!   to microseconds ([`timer`]). Latency is measured from each request's *intended* send
//!   time, so a stall that holds sends back shows in the percentiles instead of hiding
//!   (coordinated omission). The pacer's own lateness is reported as
//!   [`Report::pacing_lag`]: when it is large, the generator, not the target, was the
//!   bottleneck, and [`Report::generator_warning`] says so.
//! * **Closed loop** ([`Load::ClosedLoop`]): each connection (or each of K streams per
//!   HTTP/2 connection) sends its next request as soon as the previous answer arrives: the
//!   target's maximum throughput.
//!
//! Latencies go into HDR histograms ([`histogram`]). [`run_blocking`] gives the generator
//! a current-thread runtime of its own, so that it can be pinned to a core.
//!
//! Uses unsafe code in one place: registering the pacing timer's file descriptor with
//! tokio ([`timer`]).
//!
//! # Layout
//!
//! * [`schedule`]: when each request of an open loop is due, and on which connection.
//! * [`timer`]: a microsecond sleep on a timerfd.
//! * [`histogram`]: latency histograms, percentiles and percentile curves.
//! * `client`: the target URL and one connection's request sender.
//! * `run`: the pacer, the connection workers and the closed loops.

mod client;
pub mod histogram;
mod run;
pub mod schedule;
pub mod timer;

pub use client::{Protocol, SEQUENCE_HEADER, Target};
pub use histogram::{CurvePoint, LatencyHistogram, LatencySummary};
pub use run::{run, run_blocking};

use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("`{url}` is not a URL the load generator can use: {reason}")]
    Target { url: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("the HTTP handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    #[error("cannot use the pacing timer (timerfd): {0}")]
    Timer(std::io::Error),
    #[error("cannot start the load generator's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("invalid load settings: {0}")]
    Settings(String),
}

/// How requests are sent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Load {
    /// A constant rate over all connections together, whatever the answers' latency.
    OpenLoop { rate_per_second: f64 },
    /// As fast as answers come back; HTTP/2 connections carry this many concurrent
    /// requests (HTTP/1.1 ones always one).
    ClosedLoop { in_flight_per_connection: usize },
}

/// One run.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub protocol: Protocol,
    /// Connections opened before the run starts; kept open throughout.
    pub connections: usize,
    pub load: Load,
    /// The measured part of the run.
    pub duration: Duration,
    /// Load sent before the measured part and not recorded: connection pools, caches
    /// and allocators settle.
    pub warmup: Duration,
    /// A request unanswered after this counts as a timeout.
    pub request_timeout: Duration,
}

/// What a run measured. Only the measured window counts; the warm-up is left out.
#[derive(Clone, Debug)]
pub struct Report {
    pub load: Load,
    pub protocol: Protocol,
    pub connections: usize,
    /// Length of the measured window.
    pub window: Duration,
    /// Answers received (any status).
    pub responses: u64,
    /// Answers received during the warm-up: with [`Report::responses`], every request the
    /// target served, for dividing a cost measured over the whole run.
    pub warmup_responses: u64,
    /// Answers outside 2xx, or gRPC calls that did not end OK.
    pub bad_status: u64,
    /// Requests that failed without an answer (connection refused or reset).
    pub transport_errors: u64,
    /// Requests unanswered within the request timeout.
    pub timeouts: u64,
    /// Open loop: requests never sent because the run's deadline had passed (the target
    /// fell so far behind that they were still queued).
    pub unsent: u64,
    pub first_error: Option<String>,
    /// Open loop: from the intended send time to the end of the response (timeouts
    /// included with the time they waited). Closed loop: from the actual send.
    pub latency: LatencyHistogram,
    /// From the actual send to the end of the response: what the target alone took.
    pub service_time: LatencyHistogram,
    /// Open loop: how late the pacer released each request, the generator's own delay.
    pub pacing_lag: Option<LatencyHistogram>,
    /// Open loop: how late each request was actually sent (pacing lag plus waiting for a
    /// busy HTTP/1.1 connection).
    pub send_delay: Option<LatencyHistogram>,
}

// === impl Config ===

impl Config {
    /// An HTTP/1.1 open-loop run with a second of warm-up and a 10 s request timeout.
    pub fn open_loop(target: Target, rate_per_second: f64, duration: Duration, connections: usize) -> Self {
        Self {
            target,
            protocol: Protocol::Http1,
            connections,
            load: Load::OpenLoop { rate_per_second },
            duration,
            warmup: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), LoadgenError> {
        let refuse = |reason: &str| Err(LoadgenError::Settings(reason.to_string()));
        if self.connections == 0 {
            return refuse("at least one connection is needed");
        }
        if self.duration.is_zero() {
            return refuse("the duration must be longer than zero");
        }
        if self.request_timeout.is_zero() {
            return refuse("the request timeout must be longer than zero");
        }
        match self.load {
            Load::OpenLoop { rate_per_second } if !(rate_per_second.is_finite() && rate_per_second > 0.0) => {
                refuse("the rate must be a positive number of requests per second")
            }
            Load::ClosedLoop { in_flight_per_connection: 0 } => {
                refuse("closed loop needs at least one request in flight per connection")
            }
            _ => Ok(()),
        }
    }
}

// === impl Report ===

impl Report {
    /// Answers per second over the measured window.
    pub fn throughput(&self) -> f64 {
        self.responses as f64 / self.window.as_secs_f64()
    }

    /// Requests that did not get a good answer.
    pub fn failures(&self) -> u64 {
        self.bad_status + self.transport_errors + self.timeouts + self.unsent
    }

    /// Says when the figures measure the generator rather than the target: the pacer's
    /// p99 lateness exceeded a quarter of the median latency and 100 µs (lateness adds to
    /// every latency measured from the intended time), or the rate achieved fell short of
    /// the rate asked by more than 1 %.
    pub fn generator_warning(&self) -> Option<String> {
        let Load::OpenLoop { rate_per_second } = self.load else { return None };
        let lag = self.pacing_lag.as_ref()?;
        let lag_p99 = lag.percentile(99.0);
        let latency_p50 = self.latency.percentile(50.0);
        let mut problems = Vec::new();
        if lag_p99 > Duration::from_micros(100) && lag_p99 > latency_p50 / 4 {
            problems.push(format!(
                "its pacing lag p99 was {:.0} µs against a median latency of {:.0} µs",
                lag_p99.as_secs_f64() * 1e6,
                latency_p50.as_secs_f64() * 1e6
            ));
        }
        let achieved = self.throughput();
        if achieved < rate_per_second * 0.99 && self.failures() == 0 {
            problems.push(format!("it achieved {achieved:.0} req/s of the {rate_per_second:.0} asked"));
        }
        (!problems.is_empty())
            .then(|| format!("the load generator may have been the bottleneck: {}", problems.join("; ")))
    }
}
