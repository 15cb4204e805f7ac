//! Per-decision cost of each kernel program that BPF_PROG_TEST_RUN runs, from
//! `chaos-user bench-decide` (which loads, arms at p=0 and runs them, attaching nothing).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// One program's figure, as `bench-decide` prints it.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct Decision {
    pub program: String,
    pub faults: Vec<String>,
    pub ns: f64,
    pub empty_ns: f64,
    pub measured_by: String,
    pub runs: u32,
    pub verified_insns: Option<u32>,
}

pub(super) fn decisions(chaos_user: &Path, repeat: u32) -> Result<Vec<Decision>> {
    eprintln!("xtask: bench: per-decision cost (BPF_PROG_TEST_RUN)");
    let out = Command::new(chaos_user)
        .args(["bench-decide", "--repeat", &repeat.to_string()])
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "chaos-user bench-decide: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("bench-decide's figures")
}
