//! `cargo xtask test`: set-up, lints, unit tests, then the privileged tests as root.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    fuzz,
    privileged::{self, Tally},
    setup,
    util::{self, cargo, is_root},
    vm::{CgroupLayout, Guest},
};

/// Tests that also run in the guest (kernel 6.1: no tcx, so egress goes through clsact; a plain
/// cgroup2 mount with controllers), one boot for the whole batch.
const GUEST_TESTS: &[&str] = &[
    "udp_loss_rate_is_binomial_and_silent",
    "total_loss_inside_and_none_outside",
    "descendant_cgroups_are_targeted",
    "ingress_loss_drops_what_arrives",
    "tcp_retransmits_under_egress_loss",
    "run_ping_under_total_loss_fails_as_ping_does",
    "sigint_detaches_everything",
    "sigkill_of_inject_leaves_nothing_attached",
    "frozen_injector_goes_inert_after_its_lease",
    "sigkill_of_run_is_undone_by_recover",
    "bad_targets",
    "doctor_tells_the_truth",
    "a_clsact_qdisc_already_there_is_left_alone",
    "two_sessions_stop_independently",
    "connect_fails_with_the_chosen_errno_inside_only",
    "reset_aborts_established_connections_of_the_cgroup",
    "corrupt_flips_payload_bytes_and_the_datagram_still_arrives",
    "duplicate_sends_matching_datagrams_twice",
    "delay_adds_its_time_to_the_round_trip",
    "sigkill_leaves_nothing_of_any_network_fault",
    "egress_loss_reaches_a_target_in_another_network_namespace",
    "sigkill_with_a_target_in_another_namespace_is_undone_by_recover",
    "dns_answers_change_for_matching_names_only",
    "dns_over_tcp_and_unconnected_udp_too",
    "an_interface_that_appears_mid_session_gets_the_fault_within_a_second",
    "bandwidth_caps_a_tcp_transfer_near_the_rate",
    "bandwidth_caps_are_lifted_at_the_end_and_by_recover",
    "pause_stretches_a_timed_loop_by_the_time_frozen",
    "a_cgroup_frozen_when_chaos_user_is_killed_is_thawed_by_recover",
    "device_opens_fail_with_the_chosen_errno_inside_only",
    "fd_limit_fails_socket_creation_with_emfile_inside_only",
    "crash_kills_on_exactly_the_nth_call",
    "crash_every_nth_call_is_exact_across_threads",
    "crash_with_a_path_counts_only_calls_on_files_under_it",
    "cpu_throttle_caps_a_busy_loop_near_the_quota",
    "memory_limit_kills_what_outgrows_it_and_is_lifted_by_recover",
    "cgroup_limits_are_refused_where_the_controller_is_not_enabled",
    "cpu_hog_uses_about_its_load_in_the_cgroup",
    "memory_leak_grows_at_about_its_rate_then_holds",
    "sigkill_at_any_moment_leaves_nothing_once_recovered",
    "a_second_delay_session_is_refused_by_name",
    "two_loss_sessions_on_one_cgroup_each_drop_their_share",
    "a_second_session_of_an_exclusive_kind_is_refused",
];
/// The tests of the LSM hook faults, which the VM lane runs in both of its hook batches.
const HOOK_TESTS: &[&str] = &[
    "file_open_fails_under_the_path_inside_only_whatever_the_name",
    "nospace_fails_create_and_write_as_a_full_disk_would",
    "sqlite3_reports_a_disk_io_error_when_writes_fail",
    "nth_and_every_count_each_process_s_calls_exactly",
    "fd_limit_fails_files_pipes_and_sockets_inside_only",
    "fail_fails_fork_and_mkdir_with_the_chosen_errno",
    "sigkill_leaves_no_hook_program_behind",
    "crash_on_open_under_a_path_signals_from_the_hook",
];

/// One boot of the guest: its kernel command line, the hook programs its LSM list calls for,
/// and the tests it runs.
struct GuestBatch {
    name: &'static str,
    append: Option<&'static str>,
    hooks: &'static str,
    tests: Vec<&'static str>,
}

fn guest_batches() -> Vec<GuestBatch> {
    vec![
        GuestBatch {
            name: "guest kernel 6.1",
            append: None,
            hooks: "lsm",
            tests: GUEST_TESTS.iter().chain(HOOK_TESTS).copied().collect(),
        },
        GuestBatch {
            name: "guest 6.1, no BPF LSM",
            // Debian's list without `bpf`: lsm programs load but never run, as on Ubuntu.
            append: Some("lsm=lockdown,capability,landlock,yama,apparmor"),
            hooks: "fmod_ret",
            tests: HOOK_TESTS.to_vec(),
        },
    ]
}
/// A guest that has not finished the batch by then is killed and counted as a failure.
const GUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What `cargo xtask test` runs.
pub struct Options {
    pub long: bool,
    pub filters: Vec<String>,
    pub host: bool,
    pub guest: bool,
}

pub fn run(options: Options) -> Result<i32> {
    setup::run()?;
    util::run(cargo().args(["fmt", "--all", "--check"])).context("cargo fmt --all --check")?;
    let clippy = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ];
    util::run(cargo().args(clippy)).context("clippy")?;

    let unit = unit_tests()?;
    // The parsers under the fuzzer; left out when only some privileged tests are asked for.
    let fuzz_runs: u64 = if options.long { 1_000_000 } else { 200_000 };
    let fuzz_failed = if options.filters.is_empty() {
        Some(fuzz::run(fuzz_runs)?)
    } else {
        None
    };
    let chaos_user = util::build_chaos_user(false)?;
    let bins = test_binaries()?;
    let args = privileged::Args {
        bins,
        chaos_user,
        filters: options.filters.clone(),
        long: options.long,
        tally: None,
    };
    let host = if options.host {
        Some(host_tests(&args)?)
    } else {
        None
    };
    let guests: Vec<(&str, Tally)> = if options.guest {
        guest_batches()
            .into_iter()
            .filter_map(|batch| {
                let tally = guest_tests(&args, &options.filters, &batch)?;
                Some((batch.name, tally))
            })
            .collect()
    } else {
        Vec::new()
    };

    eprintln!();
    eprintln!(
        "unit tests:           {} passed, {} failed",
        unit.passed, unit.failed
    );
    let mut passed = unit.passed;
    let mut failed = unit.failed;
    if let Some(fuzz_failed) = &fuzz_failed {
        eprintln!(
            "fuzzing:              {} target(s) of {fuzz_runs} inputs passed, {} failed",
            fuzz::TARGETS.len() - fuzz_failed.len(),
            fuzz_failed.len()
        );
        for target in fuzz_failed {
            eprintln!("  FAILED fuzz {target}");
        }
        passed += fuzz::TARGETS.len() - fuzz_failed.len();
        failed += fuzz_failed.len();
    }
    let mut skipped = 0;
    let lanes = host
        .iter()
        .map(|t| ("host kernel", t))
        .chain(guests.iter().map(|(name, t)| (*name, t)));
    for (kernel, tally) in lanes {
        eprintln!(
            "{kernel:<21} {} passed, {} failed, {} skipped",
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
        passed += tally.passed;
        failed += tally.failed;
        skipped += tally.skipped.len();
    }
    if let (Some(host), false) = (&host, guests.is_empty()) {
        for (test, _) in &host.skipped {
            let ran_in_guest = guests.iter().any(|(_, g)| g.ran.contains(test));
            if !ran_in_guest {
                eprintln!("  FAILED {test}: runs on neither kernel");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if let Some(host) = &host {
        let root_skips = host
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
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The privileged suite on the host kernel: as root, through sudo, or (skipping) as is.
fn host_tests(args: &privileged::Args) -> Result<Tally> {
    if is_root() {
        return privileged::run_all(args);
    }
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !sudo {
        eprintln!("xtask: not root and no password-less sudo: privileged tests will skip");
        return privileged::run_all(args);
    }
    eprintln!("xtask: running the privileged tests through sudo");
    let tally_file = std::env::temp_dir().join(format!("chaos-xtask-{}.json", std::process::id()));
    let mut cmd = Command::new("sudo");
    cmd.arg(std::env::current_exe()?)
        .arg("privileged")
        .args(args.to_cli());
    cmd.arg("--tally").arg(&tally_file);
    let status = cmd.status()?;
    let text = std::fs::read(&tally_file).with_context(|| {
        format!(
            "the privileged run ({status}) wrote no tally to {}",
            tally_file.display()
        )
    })?;
    Ok(serde_json::from_slice(&text)?)
}

/// One guest batch: one boot, the runner inside; a guest that fails counts as a failure. None
/// when the filters leave the batch nothing to run.
fn guest_tests(args: &privileged::Args, filters: &[String], batch: &GuestBatch) -> Option<Tally> {
    let mut guest_args = args.clone();
    guest_args.filters = if filters.is_empty() {
        batch.tests.iter().map(|t| t.to_string()).collect()
    } else {
        let chosen: Vec<String> = filters
            .iter()
            .filter(|f| batch.tests.iter().any(|t| t.contains(f.as_str())))
            .cloned()
            .collect();
        if chosen.is_empty() {
            return None;
        }
        chosen
    };
    let tally_file = util::root().join(format!("target/xtask-guest-tally-{}.json", batch.hooks));
    let failed = |why: String| Tally {
        failed: 1,
        failures: vec![format!("guest: {why}")],
        ..Tally::default()
    };
    if tally_file.exists() && std::fs::remove_file(&tally_file).is_err() {
        return Some(failed(format!(
            "cannot remove the old {}",
            tally_file.display()
        )));
    }
    eprintln!(
        "xtask: {}: {} test(s)",
        batch.name,
        guest_args.filters.len()
    );
    let result = Guest::prepare().and_then(|guest| {
        // The tests of the hook faults check that the lane runs the kind they expect.
        let mut command = vec![
            "/usr/bin/env".to_string(),
            format!("CHAOS_EXPECT_HOOKS={}", batch.hooks),
            std::env::current_exe()?.display().to_string(),
            "privileged".into(),
        ];
        command.extend(guest_args.to_cli());
        command.push("--tally".into());
        command.push(tally_file.display().to_string());
        guest.run(&command, batch.append, CgroupLayout::V2, GUEST_TIMEOUT)
    });
    Some(match result {
        Err(e) => failed(format!("{e:#}")),
        Ok(status) => match std::fs::read(&tally_file).map(|t| serde_json::from_slice::<Tally>(&t))
        {
            Ok(Ok(tally)) => tally,
            _ => failed(format!(
                "the runner in the guest exited with {status} and wrote no tally"
            )),
        },
    })
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
