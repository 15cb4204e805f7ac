//! The fuzzing part of `cargo xtask test`: the fault spec grammar and the scenario parser under
//! cargo fuzz (libFuzzer), from the corpus in `fuzz/corpus`, for a bounded number of inputs.
//! Inputs that reach new code go to `target/fuzz-corpus`, not into the repository; an input
//! that fails lands in `fuzz/artifacts`, and the command that replays it is printed.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::util;

/// The version `cargo xtask` installs into `.tools`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Each target, and the dictionary it splices words from.
pub const TARGETS: &[(&str, Option<&str>)] =
    &[("spec", Some("fuzz/spec.dict")), ("scenario", None)];

/// Runs every target for `runs` inputs; the names of those that failed.
pub fn run(runs: u64) -> Result<Vec<String>> {
    let tools = util::root().join(".tools");
    ensure_cargo_fuzz(&tools)?;
    let mut failed = Vec::new();
    for (target, dict) in TARGETS {
        eprintln!("xtask: fuzz {target}: {runs} inputs");
        let scratch = util::root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let mut cmd = fuzz_command(&tools);
        cmd.args(["run", "--sanitizer", "none", target])
            .arg(&scratch)
            .arg(Path::new("fuzz/corpus").join(target))
            .args(["--", &format!("-runs={runs}"), "-print_final_stats=1"]);
        if let Some(dict) = dict {
            cmd.arg(format!("-dict={dict}"));
        }
        let status = cmd.status().context("run cargo fuzz")?;
        if !status.success() {
            eprintln!("xtask: fuzz {target} FAILED: the input is in fuzz/artifacts/{target}");
            failed.push((*target).to_string());
        }
    }
    eprintln!(
        "xtask: fuzz: {} of {} target(s) passed {runs} inputs{}",
        TARGETS.len() - failed.len(),
        TARGETS.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; failed: {}", failed.join(", "))
        }
    );
    Ok(failed)
}

/// `cargo fuzz` from `.tools`, in the repository. The fuzzer's instrumentation flags are
/// unstable options of rustc, which the toolchain takes on this one crate graph.
fn fuzz_command(tools: &Path) -> Command {
    let mut cmd = util::cargo();
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.arg("fuzz")
        .current_dir(util::root())
        .env("PATH", format!("{}:{path}", tools.join("bin").display()))
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

fn ensure_cargo_fuzz(tools: &Path) -> Result<()> {
    let have = util::output(Command::new(tools.join("bin/cargo-fuzz")).arg("--version"));
    if have
        .as_deref()
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        tools.display()
    );
    util::run(
        util::cargo()
            .args([
                "install",
                "--locked",
                "--quiet",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
            ])
            .arg("--root")
            .arg(tools),
    )
}
