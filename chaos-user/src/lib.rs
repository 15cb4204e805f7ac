//! chaos-user: fault injection for one cgroup, with eBPF.
//!
//! The library behind the `chaos-user` binary: the spec grammar, cgroup targets, the loader of
//! the kernel programs, sessions, the undo log and reports.

pub mod cgroup;
pub mod claim;
pub mod cli;
pub mod corrupt;
pub mod dns;
pub mod error;
pub mod experiment;
pub mod fill;
pub mod loader;
pub mod netns;
pub mod pacing;
pub mod pause;
pub mod plan;
pub mod program;
pub mod report;
pub mod session;
pub mod sockdiag;
pub mod spec;
pub mod stress;
pub mod tc;
pub mod undo;
