//! Experiments end to end: scenario files with real servers, real faults, and the records they
//! leave, checked for their measured values and for being valid JSON, JUnit XML and SVG.
#![allow(
    clippy::print_stdout,
    reason = "tests print what the experiment printed"
)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use chaos_tests::{Injector, chaos_user, root_or_skip, run, run_cgroups, skip, undo_logs};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .join("scenario.toml")
}

/// A directory of the test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("chaos-exp-{label}-{}", std::process::id()));
        let _gone = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _gone = std::fs::remove_dir_all(&self.0);
    }
}

/// Every element of an XML document, read to the end: Err for text that is not well formed.
fn xml_elements(text: &str) -> Result<Vec<String>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut names = Vec::new();
    let mut depth = 0i32;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                depth += 1;
                names.push(e.name().into_inner().to_string());
            }
            Event::Empty(e) => names.push(e.name().into_inner().to_string()),
            Event::End(_) => depth -= 1,
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{depth} element(s) left open"));
    }
    Ok(names)
}

/// Runs `experiment run FILE --json` into `dir`; checks the exit status and the record's
/// schema, and returns the record with what was printed.
fn run_recorded(dir: &Scratch, file: &Path, want: i32) -> (Value, String) {
    let json = dir.0.join("run.json");
    let (status, stdout, stderr) = run(chaos_user().args([
        "experiment".as_ref(),
        "run".as_ref(),
        file.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
    ]));
    assert_eq!(status.code(), Some(want), "{stdout} {stderr}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the record")).expect("JSON");
    assert_schema(&record);
    (record, format!("{stdout}\n{stderr}"))
}

/// Checks a record against the published schema of experiment records.
fn assert_schema(record: &Value) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/experiment-record.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the schema")).expect("JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the record breaks the schema: {errors:#?}"
    );
}

/// The body of an HTTP GET on loopback.
fn scrape(url: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(url)
        .call()
        .expect("scrape")
        .body_mut()
        .read_to_string()
        .expect("the body")
}

fn nothing_of_the_experiment_left(port: u16) {
    assert_eq!(run_cgroups(), Vec::<String>::new(), "no run cgroup left");
    assert_eq!(undo_logs(), Vec::<String>::new(), "no undo log left");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("read the temp dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("chaos-experiment-")
        })
        .map(|e| e.path())
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "no run directory left");
    assert!(
        std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], port).into(),
            Duration::from_millis(200)
        )
        .is_err(),
        "the servers on port {port} are stopped"
    );
}

#[test]
fn nginx_keeps_its_health_and_fails_fast_while_its_backend_refuses() {
    if !root_or_skip() {
        return;
    }
    if !Path::new("/usr/sbin/nginx").exists() {
        skip("nginx (Debian's nginx-light; `cargo xtask setup` installs it)");
        return;
    }
    let out = Scratch::new("nginx");
    let (json, junit, html) = (
        out.0.join("run.json"),
        out.0.join("junit.xml"),
        out.0.join("run.html"),
    );
    let scenario = example("nginx-backend-refused");
    let mut cmd = chaos_user();
    cmd.args([
        "experiment".as_ref(),
        "run".as_ref(),
        scenario.as_os_str(),
        "--json".as_ref(),
        json.as_os_str(),
        "--junit".as_ref(),
        junit.as_os_str(),
        "--html".as_ref(),
        html.as_os_str(),
        "--metrics-listen".as_ref(),
        "127.0.0.1:19464".as_ref(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut experiment = Injector::start_cmd(cmd, "phase 2/3 `backend refuses`");
    std::thread::sleep(Duration::from_millis(1500));
    let scraped = scrape("http://127.0.0.1:19464/metrics");
    let (status, lines) = experiment.wait();
    assert_eq!(status.code(), Some(0), "{lines:?}");

    // The scrape in the middle of the outage: valid OpenMetrics, and live figures.
    assert!(scraped.trim_end().ends_with("# EOF"), "{scraped}");
    for line in scraped.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().expect("a value");
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
    }
    let value = |prefix: &str| -> f64 {
        scraped
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {scraped}"))
    };
    assert_eq!(
        value("chaos_experiment_phase{phase=\"backend refuses\"}"),
        1.0
    );
    assert!(value("chaos_fault_injected{phase=\"backend refuses\"") >= 5.0);
    assert!(
        value(
            "chaos_probe_samples_total{probe=\"page\",phase=\"backend refuses\",result=\"failed\"}"
        ) >= 5.0
    );
    assert!(
        value("chaos_target_processes") >= 2.0,
        "nginx's master and worker"
    );

    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the record")).expect("JSON");
    assert_schema(&record);
    assert_eq!(record["schema_version"], 1);
    assert_eq!(record["passed"], true);
    let phases = record["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3);
    // The faults reached nginx's connects to its backend, and only those.
    let fault = &phases[1]["session"]["faults"][0];
    let injected = fault["connects"]["injected"].as_u64().expect("connects");
    assert!(injected >= 10, "{fault}");
    assert_eq!(fault["connects"]["injected"], fault["connects"]["matched"]);
    let figures = |probe: usize, phase: usize| record["probes"][probe]["phases"][phase].clone();
    // page: healthy before and after, failing while the backend refuses, and fast.
    assert_eq!(figures(0, 0)["success_rate"], 1.0);
    let outage = figures(0, 1);
    assert!(
        outage["success_rate"].as_f64().expect("rate") < 0.2,
        "{outage}"
    );
    assert!(
        outage["latency_p99_ms"].as_f64().expect("p99") < 100.0,
        "{outage}"
    );
    assert_eq!(figures(0, 2)["success_rate"], 1.0);
    // health: nginx itself never failed.
    for phase in 0..3 {
        assert_eq!(figures(1, phase)["success_rate"], 1.0, "health in {phase}");
    }
    let failed: Vec<&Value> = record["probes"][0]["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["ok"] == false)
        .collect();
    assert!(
        failed
            .iter()
            .all(|s| s["error"].as_str().unwrap_or("").contains("502")),
        "nginx answered 502 Bad Gateway: {failed:?}"
    );
    // The monitor sampled the system and the target all along.
    let monitor = record["monitor"].as_array().expect("monitor");
    assert!(monitor.len() >= 5, "{} samples", monitor.len());
    assert!(
        monitor
            .iter()
            .all(|m| m["target"]["processes"].as_u64() >= Some(2))
    );
    assert!(
        monitor
            .iter()
            .all(|m| m["system"]["memory_total_bytes"].as_u64() > Some(0))
    );
    let verifiers = record["verifiers"].as_array().expect("verifiers");
    assert_eq!(verifiers.len(), 6);
    assert!(
        verifiers.iter().all(|v| v["passed"] == true),
        "{verifiers:?}"
    );

    let names = xml_elements(&std::fs::read_to_string(&junit).expect("junit")).expect("JUnit XML");
    assert_eq!(names.iter().filter(|n| *n == "testcase").count(), 6);
    assert!(!names.contains(&"failure".to_string()));
    let page = std::fs::read_to_string(&html).expect("html");
    let svg = &page[page.find("<svg").expect("an svg")..page.find("</svg>").expect("svg end") + 6];
    let svg_names = xml_elements(svg).expect("well-formed SVG");
    assert!(svg_names.contains(&"polyline".to_string()) && svg_names.contains(&"rect".to_string()));
    assert!(page.trim_end().ends_with("</html>"));
    nothing_of_the_experiment_left(18080);
}

#[test]
fn redis_under_a_cpu_quota_keeps_its_clients_and_gets_its_cpu_back() {
    if !root_or_skip() {
        return;
    }
    if !Path::new("/usr/bin/redis-server").exists()
        || !Path::new("/usr/bin/redis-benchmark").exists()
    {
        skip(
            "redis-server and redis-benchmark (Debian's redis-server; `cargo xtask setup` installs it)",
        );
        return;
    }
    let out = Scratch::new("redis");
    let (record, printed) = run_recorded(&out, &example("redis-cpu-throttle"), 0);
    println!("{printed}");
    // The target's CPU share per phase, from the monitor's cgroup samples.
    let share = |phase: usize| -> f64 {
        let w = &record["phases"][phase];
        let (from, to) = (
            w["start_ms"].as_u64().expect("start"),
            w["end_ms"].as_u64().expect("end"),
        );
        let inside: Vec<(u64, u64)> = record["monitor"]
            .as_array()
            .expect("monitor")
            .iter()
            .map(|m| {
                (
                    m["at_ms"].as_u64().unwrap_or(0),
                    m["target"]["cpu_usec"].as_u64().unwrap_or(0),
                )
            })
            .filter(|(at, _)| *at >= from + 300 && *at <= to)
            .collect();
        let (first, last) = (
            inside.first().expect("samples"),
            inside.last().expect("samples"),
        );
        (last.1 - first.1) as f64 / ((last.0 - first.0) as f64 * 1000.0)
    };
    let (before, squeezed, after) = (share(0), share(1), share(2));
    println!("redis used {before:.3}, {squeezed:.3}, {after:.3} CPUs");
    assert!(before > 0.15, "loaded before: {before:.3}");
    assert!(
        (0.02..0.09).contains(&squeezed),
        "near the 5% quota: {squeezed:.3}"
    );
    assert!(after > 0.15, "its CPU back after: {after:.3}");
    // The four clients of the load stayed connected all along (a probe's connection may be
    // open too at the moment of a sample).
    for m in record["monitor"].as_array().expect("monitor") {
        let established = m["target"]["tcp_connections"]["Established"].as_u64();
        assert!(established >= Some(4), "{m}");
    }
    nothing_of_the_experiment_left(16379);
}

/// A scenario with a target that sleeps, and the rest given.
fn sleeper_scenario(rest: &str) -> String {
    format!("[target]\ncommand = [\"/bin/sleep\", \"60\"]\n\n{rest}",)
}

#[test]
fn a_failing_verifier_exits_1_and_junit_names_it() {
    if !root_or_skip() {
        return;
    }
    let dir = Scratch::new("fail");
    let file = dir.file(
        "s.toml",
        &sleeper_scenario(
            r#"
[[probes]]
name = "never"
command = ["/bin/false"]
interval = "100ms"

[[probes]]
name = "always"
command = ["/bin/true"]
interval = "100ms"

[[phases]]
name = "only"
duration = "1s"

[[verifiers]]
kind = "stays-healthy"
probe = "never"
phase = "only"

[[verifiers]]
kind = "stays-healthy"
probe = "always"
phase = "only"
"#,
        ),
    );
    let junit = dir.0.join("junit.xml");
    let (status, stdout, stderr) = run(chaos_user().args([
        "experiment".as_ref(),
        "run".as_ref(),
        file.as_os_str(),
        "--junit".as_ref(),
        junit.as_os_str(),
    ]));
    assert_eq!(status.code(), Some(1), "{stdout} {stderr}");
    assert!(stdout.contains("FAIL stays-healthy: never"), "{stdout}");
    assert!(stdout.contains("pass stays-healthy: always"), "{stdout}");
    let text = std::fs::read_to_string(&junit).expect("junit");
    let names = xml_elements(&text).expect("JUnit XML");
    assert_eq!(
        names.iter().filter(|n| *n == "failure").count(),
        1,
        "{text}"
    );
    assert!(text.contains("0.0% healthy"), "{text}");
    nothing_of_the_experiment_left(1);
}

#[test]
fn abort_stops_before_the_later_phases_and_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let dir = Scratch::new("abort");
    let file = dir.file(
        "s.toml",
        &sleeper_scenario(
            r#"
[[probes]]
name = "down"
tcp = "127.0.0.1:1"
interval = "50ms"

[[phases]]
name = "first"
duration = "20s"

[[phases]]
name = "never run"
duration = "20s"

[abort]
probe = "down"
failure_rate = 0.9
window = "500ms"
"#,
        ),
    );
    let started = std::time::Instant::now();
    let (record, _) = run_recorded(&dir, &file, 1);
    assert!(started.elapsed() < Duration::from_secs(15), "aborted early");
    assert_eq!(record["aborted"]["phase"], "first", "{record}");
    assert!(
        record["aborted"]["reason"]
            .as_str()
            .expect("reason")
            .contains("probe `down` failed"),
        "{record}"
    );
    assert_eq!(record["phases"].as_array().expect("phases").len(), 1);
    nothing_of_the_experiment_left(1);
}

#[test]
fn sigint_mid_phase_removes_the_faults_and_stops_the_target() {
    if !root_or_skip() {
        return;
    }
    let dir = Scratch::new("sigint");
    let file = dir.file(
        "s.toml",
        &sleeper_scenario(
            r#"
[[phases]]
name = "lossy"
duration = "60s"
faults = ["loss:p=1,proto=udp"]

[[verifiers]]
kind = "nothing-left"
"#,
        ),
    );
    let mut cmd = chaos_user();
    cmd.args(["experiment".as_ref(), "run".as_ref(), file.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let injector = Injector::start_cmd(cmd, "phase 1/1 `lossy`");
    std::thread::sleep(Duration::from_millis(300));
    let target: Vec<String> = run_cgroups();
    assert_eq!(target.len(), 1, "the target's cgroup: {target:?}");
    let (status, lines) = injector.interrupt();
    assert_eq!(status.code(), Some(1), "{lines:?}");
    nothing_of_the_experiment_left(1);
    assert_eq!(
        chaos_tests::programs_left_after(Duration::from_secs(2)),
        Vec::<String>::new()
    );
}

#[test]
fn bad_scenarios_are_refused_with_their_line_and_nothing_runs() {
    let dir = Scratch::new("bad");
    let file = dir.file(
        "s.toml",
        &sleeper_scenario(
            r#"
[[phases]]
name = "one"
duration = "1s"
faults = ["loss:p=2"]
"#,
        ),
    );
    for verb in ["validate", "run"] {
        let (status, stdout, stderr) =
            run(chaos_user().args(["experiment".as_ref(), verb.as_ref(), file.as_os_str()]));
        assert_eq!(status.code(), Some(2), "{verb}: {stdout} {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{verb}: one line: {stderr}");
        assert!(
            stderr.contains(&format!("{}:8:", file.display())) && stderr.contains("`p`"),
            "{verb}: {stderr}"
        );
    }
    assert_eq!(undo_logs(), Vec::<String>::new(), "nothing started");
    let (status, _, stderr) =
        run(chaos_user().args(["experiment", "validate", "/nonexistent.toml"]));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let good = dir.file(
        "good.toml",
        &sleeper_scenario("[[phases]]\nname = \"a\"\nduration = \"1s\"\n"),
    );
    let (status, stdout, _) =
        run(chaos_user().args(["experiment".as_ref(), "validate".as_ref(), good.as_os_str()]));
    assert_eq!(status.code(), Some(0));
    assert!(stdout.contains("valid: 1 phase(s)"), "{stdout}");
}

/// PIDs of processes whose command line is exactly `cmdline` (arguments joined by spaces).
fn processes_running(cmdline: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<String> = c
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.join(" ") == cmdline
            })
        })
        .collect()
}

#[test]
fn a_target_that_exits_aborts_the_run_and_hung_probes_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let dir = Scratch::new("exits");
    let file = dir.file(
        "s.toml",
        r#"
[target]
command = ["/bin/sh", "-c", "echo 'cannot bind: address in use' >&2; sleep 1; exit 3"]

[[probes]]
name = "hangs"
command = ["/bin/sh", "-c", "sleep 987"]
timeout = "300ms"
interval = "100ms"

[[phases]]
name = "long"
duration = "20s"
"#,
    );
    let (record, _) = run_recorded(&dir, &file, 1);
    let reason = record["aborted"]["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("the target command exited") && reason.contains("cannot bind"),
        "{reason}"
    );
    let samples = record["probes"][0]["samples"].as_array().expect("samples");
    assert!(
        samples.iter().all(|s| s["error"]
            .as_str()
            .unwrap_or("")
            .contains("no answer within")),
        "{samples:?}"
    );
    assert_eq!(
        processes_running("sleep 987"),
        Vec::<u32>::new(),
        "no probe left"
    );
    nothing_of_the_experiment_left(1);
}

#[test]
fn sigkill_mid_experiment_is_undone_by_recover_even_what_ignores_sigterm() {
    if !root_or_skip() {
        return;
    }
    let dir = Scratch::new("kill");
    let file = dir.file(
        "s.toml",
        r#"
[target]
command = ["/bin/sh", "-c", "trap '' TERM; sleep 654 & sleep 655; wait"]

[[services]]
name = "helper"
command = ["/bin/sh", "-c", "trap '' TERM; sleep 656 & wait"]

[[phases]]
name = "long"
duration = "60s"
faults = ["loss:p=1,proto=udp"]
"#,
    );
    let mut cmd = chaos_user();
    cmd.args(["experiment".as_ref(), "run".as_ref(), file.as_os_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut experiment = Injector::start_cmd(cmd, "phase 1/1 `long`");
    std::thread::sleep(Duration::from_millis(300));
    experiment.signal(libc::SIGKILL);
    let (status, _) = experiment.wait();
    assert_eq!(status.code(), None, "killed");
    assert_eq!(
        chaos_tests::programs_left_after(Duration::from_secs(2)),
        Vec::<String>::new(),
        "no program outlives a killed injector"
    );
    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    assert!(status.success(), "recover: {stdout} {stderr}");
    for sleeper in ["sleep 654", "sleep 655", "sleep 656"] {
        assert_eq!(processes_running(sleeper), Vec::<u32>::new(), "{sleeper}");
    }
    nothing_of_the_experiment_left(1);
}
