//! `doctor` against what each kernel of this project's machines is known to support.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use chaos_tests::{chaos_user, root_or_skip, run, skip};

/// What a known kernel offers: tcx, fentry, lsm programs, fq, netem.
struct Known {
    tcx: bool,
    fentry: bool,
    lsm_programs: bool,
    fq: bool,
    netem: bool,
}

/// The host kernel of these machines refuses trampolines and has no fq or netem; Debian's 6.1
/// in the guest has all of them but not tcx.
fn known(kernel: &str) -> Option<Known> {
    if kernel.starts_with("6.1.") && kernel.ends_with("-amd64") {
        Some(Known {
            tcx: false,
            fentry: true,
            lsm_programs: true,
            fq: true,
            netem: true,
        })
    } else if kernel.starts_with("6.18.") && kernel.contains("-fc-") {
        Some(Known {
            tcx: true,
            fentry: false,
            lsm_programs: false,
            fq: false,
            netem: false,
        })
    } else {
        None
    }
}

#[test]
fn doctor_tells_the_truth() {
    if !root_or_skip() {
        return;
    }
    let (status, stdout, stderr) = run(chaos_user().args(["doctor", "--json", "-"]));
    assert!(status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("doctor's JSON");
    println!("{v:#}");
    assert_eq!(v["schema_version"], 2);
    let kernel = v["kernel"].as_str().expect("kernel");
    let Some(want) = known(kernel) else {
        skip(&format!("no known expectations for kernel {kernel}"));
        return;
    };
    let f = &v["features"];
    assert_eq!(f["tcx"], want.tcx, "tcx on {kernel}");
    assert_eq!(f["fentry"]["available"], want.fentry, "fentry on {kernel}");
    assert_eq!(
        f["lsm_programs"]["available"], want.lsm_programs,
        "lsm on {kernel}"
    );
    assert_eq!(f["fq"]["available"], want.fq, "fq on {kernel}");
    assert_eq!(f["netem"]["available"], want.netem, "netem on {kernel}");
    for name in ["fentry", "lsm_programs", "fq", "netem"] {
        let available = f[name]["available"].as_bool().expect("a boolean");
        assert_eq!(
            f[name]["reason"].is_string(),
            !available,
            "{name} says why it is missing"
        );
    }
    let loss = v["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .find(|f| f["kind"] == "loss");
    let loss = loss.expect("loss is listed");
    assert_eq!(loss["available"], true, "{loss}");
    let via = if want.tcx { "tcx" } else { "clsact" };
    assert!(loss["how"].as_str().expect("how").contains(via), "{loss}");
    for fault in v["faults"].as_array().expect("faults") {
        let kind = fault["kind"].as_str().expect("kind");
        // delay depends on fq; the LSM hook faults on BPF trampolines (fentry stands for
        // them: every kernel here that runs one runs the other).
        let want_available = match kind {
            "delay" => want.fq,
            "file" | "nospace" | "fail" => want.fentry,
            _ => true,
        };
        assert_eq!(fault["available"], want_available, "{fault}");
        assert_eq!(fault["reason"].is_string(), !want_available, "{fault}");
    }
    let kinds: Vec<&str> = v["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert_eq!(kinds, chaos_user::spec::KINDS, "every kind is listed");
}

/// `bench-decide` runs each program armed for its own cgroup and an empty one of the same type
/// through BPF_PROG_TEST_RUN: the armed program walks its rules and draws, so it takes longer.
#[test]
fn decision_cost_is_measured_in_the_kernel() {
    if !root_or_skip() {
        return;
    }
    let (status, stdout, stderr) = run(chaos_user().args(["bench-decide", "--repeat", "20000"]));
    assert!(status.success(), "{stderr}");
    let costs: serde_json::Value = serde_json::from_str(&stdout).expect("bench-decide's JSON");
    println!("{costs:#}");
    let costs = costs.as_array().expect("a list");
    let programs: Vec<&str> = costs.iter().filter_map(|c| c["program"].as_str()).collect();
    assert_eq!(
        programs,
        [
            "chaos_egress",
            "chaos_ingress",
            "chaos_cg_egress",
            "chaos_xdp",
            "chaos_sys_enter",
            "chaos_sys_exit"
        ]
    );
    for c in costs {
        let ns = c["ns"].as_f64().expect("ns");
        let empty = c["empty_ns"].as_f64().expect("empty_ns");
        assert!(empty > 0.0 && ns > 0.0, "{c}");
    }
    // Three rules walked, parsed and drawn for every packet: far more than returning at once.
    let egress = &costs[0];
    assert!(
        egress["ns"].as_f64() > egress["empty_ns"].as_f64().map(|e| e * 1.2),
        "{egress}"
    );
}
