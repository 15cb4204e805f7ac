use super::*;

const GOOD: &str = r#"
name = "web keeps answering"

[target]
command = ["/bin/sh", "{dir}/server.sh", "8080"]
ready = "127.0.0.1:8080"

[dependencies]
db = "127.0.0.1:5432"
cache = "::1"

[[probes]]
name = "api"
http = "http://127.0.0.1:8080/health"
body = "ok"
interval = "100ms"

[[probes]]
name = "port"
tcp = "127.0.0.1:8080"

[[phases]]
name = "baseline"
duration = "2s"

[[phases]]
name = "db down"
duration = "3s"
faults = ["connect:dep=db,errno=ECONNREFUSED", "loss:dep=cache,p=0.5"]

[[phases]]
name = "recovery"
duration = "2s"

[abort]
probe = "api"
failure_rate = 0.9

[[verifiers]]
kind = "recovery-time"
probe = "api"
within = "1s"

[[verifiers]]
kind = "fail-fast"
probe = "api"
phase = "db down"
within = "200ms"

[[verifiers]]
kind = "nothing-left"
"#;

fn err(text: &str) -> String {
    parse(Path::new("/x/s.toml"), text).unwrap_err().to_string()
}

#[test]
fn a_good_scenario_parses_with_dependencies_in_its_faults() {
    let s = parse(Path::new("/srv/exp/s.toml"), GOOD).unwrap();
    assert_eq!(s.name, "web keeps answering");
    assert!(matches!(&s.target.kind, TargetKind::Command(c) if c[1] == "/srv/exp/server.sh"));
    assert_eq!(s.phases.len(), 3);
    let (written, spec) = &s.phases[1].faults[0];
    assert_eq!(written, "connect:dep=db,errno=ECONNREFUSED");
    let text = spec.to_string();
    assert!(
        text.contains("dst=127.0.0.1") && text.contains("dport=5432"),
        "{text}"
    );
    assert!(s.phases[1].faults[1].1.to_string().contains("dst=::1"));
    assert_eq!(s.probes[0].interval, Duration::from_millis(100));
    assert_eq!(s.probes[1].timeout, Duration::from_secs(1));
    assert_eq!(s.verifiers.len(), 3);
}

#[test]
fn errors_name_the_line_and_the_key() {
    let bad_fault = GOOD.replace("errno=ECONNREFUSED", "errno=EWHAT");
    let e = err(&bad_fault);
    assert!(e.starts_with("/x/s.toml:29:"), "{e}");
    assert!(e.contains("db down") && e.contains("EWHAT"), "{e}");

    let e = err(&GOOD.replace("dep=db", "dep=queue"));
    assert!(
        e.contains("no dependency named `queue`") && e.contains("db"),
        "{e}"
    );

    let e = err(&GOOD.replace("within = \"1s\"", "within = \"soon\""));
    assert!(e.starts_with("/x/s.toml:39:"), "{e}");
    assert!(
        e.contains("recovery-time.within: `soon` is not a duration"),
        "{e}"
    );

    let e = err(&GOOD.replace("phase = \"db down\"", "phase = \"db gone\""));
    assert!(e.contains("no phase named `db gone`"), "{e}");

    let e = err(&GOOD.replace(
        "probe = \"api\"\nfailure_rate",
        "probe = \"apj\"\nfailure_rate",
    ));
    assert!(
        e.contains("abort.probe: there is no probe named `apj`"),
        "{e}"
    );

    let e = err(&GOOD.replace("interval = \"100ms\"", "intervall = \"100ms\""));
    assert!(
        e.starts_with("/x/s.toml:16:") && e.contains("intervall"),
        "{e}"
    );

    let e = err(&GOOD.replace("failure_rate = 0.9", "failure_rate = 1.5"));
    assert!(e.contains("not in (0, 1]"), "{e}");

    let e = err(&GOOD.replace("kind = \"nothing-left\"", "kind = \"nothing-lef\""));
    assert!(e.contains("nothing-lef"), "{e}");

    let e = err(&GOOD.replace("tcp = \"127.0.0.1:8080\"", "tcp = \"localhost\""));
    assert!(e.contains("not an address and port"), "{e}");

    let e = err(
        "[target]\ncgroup = \"a\"\ncommand = [\"b\"]\n[[phases]]\nname = \"x\"\nduration = \"1s\"\n",
    );
    assert!(
        e.starts_with("/x/s.toml:1:") && e.contains("one of `cgroup`"),
        "{e}"
    );

    let e = err("[target]\ncgroup = \"a\"\n");
    assert!(e.contains("no [[phases]]"), "{e}");

    let e = err(&GOOD.replace("name = \"recovery\"", "name = \"baseline\""));
    assert!(e.contains("`baseline` is named twice"), "{e}");

    let e = err(&GOOD.replace("/bin/sh", "/no/such/program"));
    assert!(e.contains("there is no program `/no/such/program`"), "{e}");

    let e = err(&GOOD.replace("duration = \"3s\"", "duration = \"18446744073709551615s\""));
    assert!(
        e.contains("duration:") && e.contains("longer than a day"),
        "{e}"
    );

    let e = err(&GOOD.replace("dep=db,", "dep=db,dport=1,"));
    assert!(e.contains("give either, not both"), "{e}");

    let e = err(&GOOD.replace("loss:dep=cache", "file:dep=cache"));
    assert!(e.contains("which `file` does not take"), "{e}");

    let e = err(&GOOD.replace("http://127.0.0.1:8080/health", "http://127.0.0.1:99999/"));
    assert!(e.contains("port up to 65535"), "{e}");

    let e = err(&GOOD.replace("body = \"ok\"", "status = 999"));
    assert!(e.contains("999 is not an HTTP status"), "{e}");

    let e = err(&GOOD.replace("name = \"port\"", "name = \"\""));
    assert!(e.contains("probes: the name `` is empty"), "{e}");

    let e = err(&GOOD.replace(
        "failure_rate = 0.9",
        "failure_rate = 0.9\nwindow = \"150ms\"",
    ));
    assert!(e.contains("fewer than two samples of `api`"), "{e}");

    let e = err(&GOOD.replace("within = \"1s\"", "within = \"1s\"\nconsecutive = 0"));
    assert!(e.contains("consecutive: at least 1"), "{e}");

    let no_recovery = GOOD.replace("[[phases]]\nname = \"recovery\"\nduration = \"2s\"\n", "");
    let e = err(&no_recovery);
    assert!(
        e.contains("recovery-time: needs a phase without faults after"),
        "{e}"
    );

    let e = err(&GOOD.replace(
        "kind = \"nothing-left\"",
        "kind = \"integrity\"\nfiles = [\"/x\"]\nexpect = \"ok\"",
    ));
    assert!(e.contains("integrity.expect"), "{e}");

    let nine = ["\"loss:p=0.1\""; 9].join(", ");
    let e = err(&GOOD.replace(
        "faults = [\"connect:dep=db,errno=ECONNREFUSED\", \"loss:dep=cache,p=0.5\"]",
        &format!("faults = [{nine}]"),
    ));
    assert!(
        e.contains("phases `db down`") && e.contains("at most 8"),
        "{e}"
    );

    let e = err(&GOOD.replace("interval = \"100ms\"", "interval = 5"));
    assert!(
        e.starts_with("/x/s.toml:16:") && e.contains("interval:"),
        "{e}"
    );
}

#[test]
fn a_message_quoting_the_file_stays_one_line() {
    let text = "[target]\ncommand = [\"true\"]\n[[phases]]\nname = \"p\"\nduration = \"1s\"\n\
                faults = [\"lo\\nss:dep=db,p=1\"]\n";
    let e = err(text);
    assert!(!e.contains('\n'), "{e:?}");
    assert!(e.contains("lo\\nss"), "{e}");
}
