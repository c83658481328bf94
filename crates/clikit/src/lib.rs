//! What the `tarmac` command and the benchmark library (`tarmac-bench`) share, so that the
//! benchmark need not depend on the command: durations as the command line writes them,
//! and private work directories for generated configurations, logs and throwaway keys.

pub mod duration;
pub mod workdir;
