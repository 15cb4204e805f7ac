//! `cargo xtask test`: set-up, lints, unit tests, then the privileged tests as root.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    privileged::{self, Tally},
    setup,
    util::{self, cargo, is_root},
};

pub fn run(long: bool, filter: Option<String>) -> Result<i32> {
    setup::run()?;
    util::run(cargo().args(["fmt", "--all", "--check"])).context("cargo fmt --all --check")?;
    util::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy")?;

    let unit = unit_tests()?;
    let chaos_user = util::build_chaos_user(false)?;
    let bins = test_binaries()?;
    let args = privileged::Args {
        bins,
        chaos_user,
        filter,
        long,
        tally: None,
    };
    let tally = if is_root() {
        privileged::run_all(&args)?
    } else if Command::new("sudo")
        .arg("-n")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("xtask: running the privileged tests through sudo");
        let tally_file =
            std::env::temp_dir().join(format!("chaos-xtask-{}.json", std::process::id()));
        let mut cmd = Command::new("sudo");
        cmd.arg(std::env::current_exe()?)
            .arg("privileged")
            .args(args.to_cli());
        cmd.arg("--tally").arg(&tally_file);
        let status = cmd.status()?;
        let tally: Tally =
            serde_json::from_slice(&std::fs::read(&tally_file).with_context(|| {
                format!(
                    "the privileged run ({status}) wrote no tally to {}",
                    tally_file.display()
                )
            })?)?;
        tally
    } else {
        eprintln!("xtask: not root and no password-less sudo: privileged tests will skip");
        privileged::run_all(&args)?
    };

    let passed = unit.passed + tally.passed;
    let failed = unit.failed + tally.failed;
    eprintln!();
    eprintln!(
        "unit tests:       {} passed, {} failed",
        unit.passed, unit.failed
    );
    eprintln!(
        "privileged tests: {} passed, {} failed, {} skipped",
        tally.passed,
        tally.failed,
        tally.skipped.len()
    );
    for (test, reason) in &tally.skipped {
        eprintln!("  skipped {test}: {reason}");
    }
    for test in &tally.failures {
        eprintln!("  FAILED {test}");
    }
    println!(
        "{passed} passed, {failed} failed, {} skipped",
        tally.skipped.len()
    );
    let root_skips = tally
        .skipped
        .iter()
        .filter(|(_, r)| r.contains(privileged::NOT_ROOT))
        .count();
    if root_skips > 0 {
        eprintln!(
            "xtask: {root_skips} privileged test(s) skipped for lack of root: this run proves nothing about them"
        );
        return Ok(1);
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

#[derive(Default)]
struct UnitTally {
    passed: usize,
    failed: usize,
}

fn unit_tests() -> Result<UnitTally> {
    let mut child = cargo()
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--exclude",
            "chaos-tests",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut tally = UnitTally::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            tally.passed += count(rest, " passed");
            tally.failed += count(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        bail!("the unit tests did not run: {status}");
    }
    Ok(tally)
}

/// The number before `word` in a libtest result line.
fn count(line: &str, word: &str) -> usize {
    line.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word.trim())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn test_binaries() -> Result<Vec<PathBuf>> {
    let out = cargo()
        .args([
            "test",
            "--package",
            "chaos-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the privileged tests failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true {
            if let Some(exe) = msg["executable"].as_str() {
                bins.push(PathBuf::from(exe));
            }
        }
    }
    if bins.is_empty() {
        bail!("no privileged test binaries were built");
    }
    Ok(bins)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_libtest_lines() {
        let line =
            "ok. 12 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(super::count(line, " passed"), 12);
        assert_eq!(super::count(line, " failed"), 1);
    }
}
