//! What the `tarmac` command and the benchmark library (`tarmac-bench`) share, so that the
//! benchmark need not depend on the command: durations as the command line writes them,
//! private work directories for generated configurations, logs and throwaway keys, and
//! loopback ports for the children both start.

pub mod duration;
pub mod ports;
pub mod workdir;
