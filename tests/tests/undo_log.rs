//! The undo log steers `recover`, which removes cgroups and lifts limits as root: it is kept
//! where only its owner may write, and a log that others could have written, or that does
//! not parse, is reported and left alone rather than trusted.
#![allow(clippy::print_stdout, reason = "tests print what chaos-user said")]

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    time::Duration,
};

use chaos_tests::{
    Injector, TestCgroup, chaos_user, our_programs_loaded, root_or_skip, run, runtime_dir,
    undo_logs,
};

/// A log naming `cgroup` as a transient cgroup of a session that is gone, as `recover` would
/// undo it: by removing the cgroup.
fn log_removing(cgroup: &Path) -> String {
    serde_json::json!({
        "schema_version": 1,
        "pid": 999_999_999u32,
        "start_time": 1,
        "entries": [{"kind": "cgroup", "path": cgroup}],
    })
    .to_string()
}

#[test]
fn undo_logs_are_owner_only() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    // `bandwidth` caps TCP pacing, which the kernel keeps: the session logs it.
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "bandwidth:rate=10mbit",
    ]);
    let dir = std::fs::metadata(runtime_dir()).expect("the runtime directory");
    assert_eq!(dir.mode() & 0o022, 0, "nobody else writes in it");
    let logs = undo_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = std::fs::metadata(runtime_dir().join(&logs[0])).expect("the log");
    assert_eq!(log.mode() & 0o777, 0o600, "{}: owner only", logs[0]);
    assert_eq!(log.uid(), 0);
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(undo_logs().is_empty());
}

#[test]
fn damaged_or_foreign_undo_logs_are_reported_not_trusted() {
    if !root_or_skip() {
        return;
    }
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir).expect("the runtime directory");
    // Named as `run` names its cgroups, so that only trust stands between the log and it.
    let bait = TestCgroup::new(&format!("{}bait", chaos_user::cgroup::RUN_CGROUP_PREFIX));

    // Writable by others: anyone could have named this cgroup.
    let foreign = dir.join("session-999999999.json");
    std::fs::write(&foreign, log_removing(&bait.path)).expect("write the log");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o666))
        .expect("chmod the log");
    // Not an undo log at all.
    let garbage = dir.join("session-999999998.json");
    std::fs::write(&garbage, b"{\"entries\": [").expect("write the log");
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the log");

    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    println!("{status}\n{stdout}{stderr}");
    assert_eq!(status.code(), Some(3), "logs left alone: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is left alone, not trusted: it may be written by others (mode 666)",
            foreign.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{} is left alone, not an undo log: ",
            garbage.display()
        )),
        "{stderr}"
    );
    assert!(bait.path.exists(), "the foreign log removed nothing");
    assert!(
        foreign.exists() && garbage.exists(),
        "both are left for a person to judge"
    );

    // The same log, owner-only: trusted, and the cgroup it names goes.
    std::fs::remove_file(&garbage).expect("remove the garbage");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the log");
    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    println!("{status}\n{stdout}{stderr}");
    assert!(status.success(), "{stderr}");
    assert!(!bait.path.exists(), "a trusted log is undone");
    assert!(undo_logs().is_empty());
}

#[test]
fn a_runtime_directory_others_may_write_is_refused() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let open = std::env::temp_dir().join(format!("chaos-open-run-{}", std::process::id()));
    std::fs::create_dir_all(&open).expect("create the directory");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (status, stdout, stderr) = run(chaos_user()
        .env("CHAOS_USER_RUNTIME_DIR", &open)
        .args(["inject", "--cgroup", &target.name, "--duration", "1s"])
        .args(["--fault", "bandwidth:rate=10mbit"]));
    println!("{status}\n{stdout}{stderr}");
    let entries = std::fs::read_dir(&open).map(|d| d.count()).unwrap_or(0);
    let _removed = std::fs::remove_dir(&open);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("may be written by others (mode 777)")
            && stderr.contains("CHAOS_USER_RUNTIME_DIR"),
        "{stderr}"
    );
    assert!(!stderr.contains("  "), "one plain line: {stderr}");
    assert_eq!(entries, 0, "nothing written there");
    std::thread::sleep(Duration::from_millis(100));
    assert!(our_programs_loaded().is_empty(), "nothing attached");
}

#[test]
fn recover_trusts_no_log_in_a_directory_others_may_write() {
    if !root_or_skip() {
        return;
    }
    let bait = TestCgroup::new(&format!("{}bait", chaos_user::cgroup::RUN_CGROUP_PREFIX));
    let open = std::env::temp_dir().join(format!("chaos-open-rec-{}", std::process::id()));
    std::fs::create_dir_all(&open).expect("create the directory");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let log = open.join("session-999999999.json");
    std::fs::write(&log, log_removing(&bait.path)).expect("write the log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (status, stdout, stderr) = run(chaos_user()
        .env("CHAOS_USER_RUNTIME_DIR", &open)
        .arg("recover"));
    println!("{status}\n{stdout}{stderr}");
    let _removed = std::fs::remove_file(&log);
    let _removed = std::fs::remove_dir(&open);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("may be written by others (mode 777): its undo logs are not trusted"),
        "{stderr}"
    );
    assert!(bait.path.exists(), "nothing undone");
}

#[test]
fn odd_runtime_directories_and_logs_are_refused() {
    if !root_or_skip() {
        return;
    }
    // A relative directory would differ from one working directory to the next.
    let (status, _, stderr) = run(chaos_user()
        .env("CHAOS_USER_RUNTIME_DIR", "relative-rt")
        .arg("recover"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not an absolute path"), "{stderr}");
    // A log of another format is left alone, not read as this one's.
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir).expect("the runtime directory");
    let newer = dir.join("session-999999997.json");
    std::fs::write(
        &newer,
        r#"{"schema_version":999,"pid":999999997,"start_time":1,"entries":[]}"#,
    )
    .expect("write the log");
    std::fs::set_permissions(&newer, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (status, _, stderr) = run(chaos_user().arg("recover"));
    let kept = newer.exists();
    let _removed = std::fs::remove_file(&newer);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("written in format 999"), "{stderr}");
    assert!(kept, "the log is left for a person to judge");
    // Without root, recover says so rather than reading what it may not undo.
    let mut nobody = chaos_user();
    nobody.arg("recover");
    std::os::unix::process::CommandExt::uid(&mut nobody, 65534);
    let (status, _, stderr) = run(&mut nobody);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("recover needs root"), "{stderr}");
}
