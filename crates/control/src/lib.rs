//! `tarmac-control`: the Tarmac control plane. It turns desired state (a directory of YAML,
//! or later the Kubernetes API) into what each proxy needs, and keeps serving the last good
//! state when the input is wrong.
//!
//! # Layout
//! - [`store`]: where desired state comes from, behind one trait: [`store::files`] reads
//!   and watches a directory (the local mode); a Kubernetes backend comes later.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod store;
