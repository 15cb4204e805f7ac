//! The grammar's own tests: what parses, what is refused and how it is named.

use super::*;

fn loss(text: &str) -> LossSpec {
    match parse_fault(text) {
        Ok(FaultSpec::Loss(l)) => l,
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn loss_defaults() {
    let l = loss("loss:p=0.3");
    assert_eq!(l.p, 0.3);
    assert_eq!(l.dir, Direction::Both);
    assert_eq!(l.filter.proto, Proto::Any);
    assert!(l.filter.src.is_none() && l.filter.dport.is_none());
}

#[test]
fn loss_every_key() {
    let l =
        loss("loss:p=1,dir=egress,proto=udp,src=10.1.2.3/8,dst=10.9.9.9,sport=1000-2000,dport=53");
    assert_eq!(l.dir, Direction::Egress);
    assert_eq!(l.filter.proto, Proto::Udp);
    assert_eq!(l.filter.src.unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(l.filter.sport, Some(Ports { lo: 1000, hi: 2000 }));
    assert_eq!(l.filter.dport, Some(Ports { lo: 53, hi: 53 }));
    assert_eq!(threshold(l.p), 1 << 32);
}

#[test]
fn mixed_families_conflict() {
    let err = parse_fault("loss:p=1,src=10.0.0.0/8,dst=::1").unwrap_err();
    assert!(matches!(err, SpecError::Conflict(_)), "{err}");
}

#[test]
fn canonical_text_round_trips() {
    for text in [
        "loss:p=0.3",
        "loss:p=0.05,dir=ingress,proto=tcp,dst=127.0.0.0/8,dport=80-90",
        "loss:model=gilbert,enter_bad=0.01,leave_bad=0.3,loss_bad=0.9,flows=0.5",
        "delay:time=100ms,jitter=10ms,proto=icmp",
        "bandwidth:rate=1mbit,burst=32KiB,dport=443",
        "bandwidth:rate=1001bps,burst=1500",
        "corrupt:p=0.01,bytes=4",
        "duplicate:p=0.2,flows=0.3",
        "connect:errno=econnrefused,dport=5432",
        "connect:redirect=[::1]:8080,p=0.5",
        "reset",
        "reset:interval=2s,dport=80",
        "dns:name=*.Example.com.,answer=198.51.100.1,p=0.5,flows=0.2",
        "xdp-drop:dev=lo,p=0.1,proto=udp",
        "pause:for=200ms,interval=2s",
        "device:major=1,minor=5,type=char,access=rw,errno=EIO,p=0.5",
        "device:major=8",
        "fd-limit:p=1",
        "crash:syscall=fsync,signal=SIGKILL,nth=1000",
        "crash:syscall=getppid,signal=SIGRTMIN+1,every=10",
        "crash:syscall=openat,signal=9,p=0.5",
        "fd-limit:p=0.25",
        "pause:for=1s,interval=5s,random=true",
        "pause:for=5s,interval=7500ms,random=true,seed=42",
        "file:op=open,errno=EACCES,path=/srv/data,p=0.5",
        "file:op=create+write,errno=EIO,nth=3",
        "file:errno=EROFS,every=2",
        "nospace:path=/var/lib/app,p=1",
        "nospace:nth=10",
        "fail:syscall=fork,errno=EAGAIN,p=0.1",
        "fail:syscall=mkdir,errno=EROFS,path=/srv,every=5",
        "crash:syscall=fsync,signal=SIGKILL,nth=3,path=/srv/db",
        "disk-fill:path=/var/lib/app,free=100MiB",
        "disk-fill:path=/mnt,use=95%",
        "disk-fill:path=/mnt,use=99.5%",
        "page-cache:path=/var/lib/db",
        "page-cache:path=/var/lib/db,interval=500ms",
        "corrupt-file:path=/srv/db,mode=bitflip,count=8,seed=42",
        "corrupt-file:path=/srv/db,mode=bitflip,count=1",
        "corrupt-file:path=/srv/db,mode=truncate,to=4KiB",
        "corrupt-file:path=/srv/db,mode=torn,offset=8KiB,len=4KiB",
        "corrupt-file:path=/srv/db,mode=zero-range,offset=100,len=7",
        "cpu-hog:workers=4,load=80%",
        "cpu-hog:workers=1,load=100%",
        "memory-pressure:size=512MiB",
        "memory-pressure:limit=64MiB",
        "cpu-throttle:quota=20%",
        "io-stress:path=/var/tmp,workers=2,bytes=64MiB",
        "cpu-throttle:quota=2.5%",
        "memory-leak:rate=10MiB/s,max=1GiB,then=hold",
        "memory-leak:rate=1000/s,max=1MiB,then=release",
    ] {
        let spec = parse_fault(text).unwrap();
        assert_eq!(parse_fault(&spec.to_string()).unwrap(), spec);
    }
}

#[test]
fn file_ops_and_the_fail_table() {
    let FaultSpec::File(f) = parse_fault("file:op=write+open+write").unwrap() else {
        panic!("a file fault")
    };
    assert_eq!(
        f.ops,
        vec![FileOp::Open, FileOp::Write],
        "sorted, once each"
    );
    assert_eq!(f.errno.number, libc::EIO, "EIO by default");
    assert_eq!(f.when, Schedule::P(1.0), "every call by default");
    let FaultSpec::File(any) = parse_fault("file").unwrap() else {
        panic!("a file fault")
    };
    assert_eq!(any.ops, FileOp::ALL.to_vec());
    // Every name the table takes is a syscall this build knows, and each maps to a hook.
    for (name, ops, _) in FAIL_SYSCALLS {
        assert!(SYSCALLS.iter().any(|(n, _)| n == name), "{name}");
        assert_eq!(ops.count_ones(), 1, "{name}");
    }
}

#[test]
fn spelling_is_forgiving_where_it_is_unambiguous() {
    assert_eq!(
        parse_fault("loss :p=0.1").unwrap(),
        parse_fault("loss:p=0.1").unwrap()
    );
    assert_eq!(
        parse_fault("loss:p=-0").unwrap().to_string(),
        "loss:p=0,dir=both"
    );
}

#[test]
fn units_are_tcs() {
    assert_eq!(parse_rate("r", "1mbit").unwrap(), 125_000);
    assert_eq!(parse_rate("r", "200kbps").unwrap(), 200_000);
    assert_eq!(parse_rate("r", "1kibit").unwrap(), 128);
    assert_eq!(parse_rate("r", "1.5gbit").unwrap(), 187_500_000);
    assert_eq!(parse_size("b", "64KiB").unwrap(), 65536);
    assert_eq!(parse_size("b", "1500").unwrap(), 1500);
}

#[test]
fn gilbert_theory() {
    let FaultSpec::Loss(l) =
        parse_fault("loss:model=gilbert,enter_bad=0.01,leave_bad=0.25").unwrap()
    else {
        panic!()
    };
    let (mean, burst) = l.model.theory(l.p);
    assert!((mean - 0.01 / 0.26).abs() < 1e-12 && (l.p - mean).abs() < 1e-12);
    assert!((burst - 4.0).abs() < 1e-12);
}

#[test]
fn thresholds() {
    assert_eq!(threshold(loss("loss:p=0").p), 0);
    assert_eq!(threshold(loss("loss:p=0.5").p), 1 << 31);
    assert_eq!(threshold(loss("loss:p=1").p), 1 << 32);
}

#[test]
fn bad_input_is_named() {
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("latency:for=10ms", "unknown fault kind `latency`"),
        ("delay:for=10ms", "unknown key `for` for `delay`"),
        ("delay:time=10", "bad value `10` for `time`"),
        ("delay:time=10ms,jitter=20ms", "cannot be larger than time"),
        ("delay:time=2m", "at most 60s"),
        ("bandwidth", "`bandwidth` needs `rate`"),
        ("bandwidth:rate=1000", "bad value `1000` for `rate`"),
        ("bandwidth:rate=1mbyte", "bad value `1mbyte` for `rate`"),
        ("bandwidth:rate=1mbit,burst=2GiB", "1GiB"),
        (
            "bandwidth:rate=1mbit,burst=lots",
            "bad value `lots` for `burst`",
        ),
        ("corrupt:p=0.1,bytes=0", "bad value `0` for `bytes`"),
        ("corrupt:p=0.1,bytes=65", "bad value `65` for `bytes`"),
        ("duplicate", "`duplicate` needs `p`"),
        ("connect", "`connect` needs `errno`"),
        (
            "connect:errno=EWHATEVER",
            "bad value `EWHATEVER` for `errno`",
        ),
        ("connect:errno=EIO,redirect=127.0.0.1:1", "not both"),
        (
            "connect:redirect=127.0.0.1",
            "bad value `127.0.0.1` for `redirect`",
        ),
        ("connect:errno=EIO,sport=1", "unknown key `sport`"),
        (
            "connect:redirect=[::1]:80,dst=10.0.0.0/8",
            "different address families",
        ),
        ("reset:interval=0s", "longer than zero"),
        ("reset:proto=udp", "unknown key `proto` for `reset`"),
        ("dns", "`dns` needs `answer`"),
        ("dns:answer=maybe", "bad value `maybe` for `answer`"),
        ("dns:name=a/b,answer=nxdomain", "bad value `a/b` for `name`"),
        ("xdp-drop:p=1", "`xdp-drop` needs `dev`"),
        ("xdp-drop:dev=a/b,p=1", "bad value `a/b` for `dev`"),
        ("loss:p=0.1,flows=0", "a share of flows above 0"),
        ("loss:P=0.5", "unknown key `P`"),
        ("delay:time=61s", "bad value `61s` for `time`"),
        (
            "bandwidth:rate=1mbit,burst=64kb",
            "bad value `64kb` for `burst`",
        ),
        (
            "bandwidth:rate=1mbit,burst=100GiB",
            "bad value `100GiB` for `burst`",
        ),
        ("reset:interval=1ms", "at least 100ms"),
        ("device", "`device` needs `major`"),
        ("fd-limit:p=2", "bad value `2` for `p`"),
        ("crash", "`crash` needs `syscall`"),
        (
            "crash:syscall=frobnicate,nth=1",
            "bad value `frobnicate` for `syscall`",
        ),
        ("crash:syscall=fsync", "`crash` needs one of `nth`"),
        ("crash:syscall=fsync,nth=0", "bad value `0` for `nth`"),
        (
            "crash:syscall=fsync,nth=1,every=2",
            "give one of nth, every and p",
        ),
        (
            "crash:syscall=fsync,nth=1,signal=SIGWHAT",
            "bad value `SIGWHAT` for `signal`",
        ),
        (
            "crash:syscall=fsync,nth=1,signal=99",
            "bad value `99` for `signal`",
        ),
        (
            "crash:syscall=fsync,nth=1,signal=32",
            "bad value `32` for `signal`",
        ),
        (
            "crash:syscall=fsync,nth=1,signal=SIGSTOP",
            "bad value `SIGSTOP` for `signal`",
        ),
        ("device:major=4096", "bad value `4096` for `major`"),
        ("file:op=append", "bad value `append` for `op`"),
        ("disk-fill", "`disk-fill` needs `path`"),
        ("page-cache", "`page-cache` needs `path`"),
        ("corrupt-file", "`corrupt-file` needs `path`"),
        ("cpu-hog:workers=0", "bad value `0` for `workers`"),
        ("cpu-hog:load=150%", "bad value `150%` for `load`"),
        ("cpu-hog:load=0.8", "bad value `0.8` for `load`"),
        (
            "memory-pressure",
            "`memory-pressure` needs one of `size`, `limit`",
        ),
        ("memory-pressure:size=1MiB,limit=1MiB", "not both"),
        ("cpu-throttle", "`cpu-throttle` needs `quota`"),
        ("io-stress", "`io-stress` needs `path`"),
        ("io-stress:path=/x,workers=0", "bad value `0` for `workers`"),
        ("io-stress:path=/x,bytes=0", "bad value `0` for `bytes`"),
        ("cpu-throttle:quota=0.2", "bad value `0.2` for `quota`"),
        ("cpu-throttle:quota=0.5%", "expected at least 1%"),
        ("memory-pressure:size=0", "bad value `0` for `size`"),
        (
            "memory-leak:rate=10MiB,max=1GiB",
            "bad value `10MiB` for `rate`",
        ),
        ("memory-leak:rate=10MiB/s", "`memory-leak` needs `max`"),
        (
            "memory-leak:rate=1MiB/s,max=1GiB,then=free",
            "bad value `free` for `then`",
        ),
        (
            "corrupt-file:path=/f,mode=shred",
            "bad value `shred` for `mode`",
        ),
        (
            "corrupt-file:path=/f,mode=truncate",
            "`corrupt-file` needs `to`",
        ),
        (
            "corrupt-file:path=/f,mode=torn,offset=0",
            "`corrupt-file` needs `len`",
        ),
        (
            "corrupt-file:path=/f,mode=torn,offset=0,len=0",
            "bad value `0` for `len`",
        ),
        (
            "corrupt-file:path=/f,to=10",
            "`to` does not go with mode=bitflip",
        ),
        ("corrupt-file:path=/f,count=0", "bad value `0` for `count`"),
        ("page-cache:path=/x,interval=10ms", "at least 100ms"),
        ("page-cache:path=x", "expected an absolute path"),
        (
            "disk-fill:path=/mnt",
            "`disk-fill` needs one of `free`, `use`",
        ),
        ("disk-fill:path=/mnt,use=95", "bad value `95` for `use`"),
        ("disk-fill:path=/mnt,use=0%", "bad value `0%` for `use`"),
        ("disk-fill:path=/mnt,free=1MiB,use=5%", "not both"),
        (
            "disk-fill:path=/mnt,free=lots",
            "bad value `lots` for `free`",
        ),
        ("file:op=open+", "bad value `open+` for `op`"),
        ("file:path=relative/dir", "expected an absolute path"),
        ("file:errno=ENOPE", "bad value `ENOPE` for `errno`"),
        ("file:nth=1,p=0.5", "give one of nth, every and p"),
        ("file:nth=0", "bad value `0` for `nth`"),
        ("nospace:errno=EIO", "unknown key `errno`"),
        ("fail", "`fail` needs `syscall`"),
        ("fail:syscall=fork", "`fail` needs `errno`"),
        (
            "fail:syscall=getpid,errno=EIO",
            "fail does not cover getpid",
        ),
        ("fail:syscall=connect,errno=EIO", "the connect fault"),
        ("file:path=", "`path=` in `file` has no value"),
        (
            "crash:syscall=fsync,path=/tmp",
            "`crash` needs one of `nth`, `every`, `p`",
        ),
        ("file:errno=4096", "bad value `4096` for `errno`"),
        (
            "fail:syscall=frob,errno=EIO",
            "bad value `frob` for `syscall`",
        ),
        (
            "fail:syscall=fork,errno=EIO,path=/x",
            "path= does not apply to fork",
        ),
        ("crash:syscall=getppid,nth=1,path=/x", "getppid is not one"),
        ("pause:for=1s,interval=2s,seed=7", "seed picks the moments"),
        ("fd-limit:errno=EIO", "unknown key `errno`"),
        ("device:major=x", "bad value `x` for `major`"),
        ("device:major=1,access=rx", "bad value `rx` for `access`"),
        ("device:major=1,type=pipe", "bad value `pipe` for `type`"),
        (
            "device:major=1,errno=EWHAT",
            "bad value `EWHAT` for `errno`",
        ),
        ("pause", "`pause` needs `for`"),
        ("pause:for=1s", "`pause` needs `interval`"),
        ("pause:for=2s,interval=1s", "shorter than its `interval`"),
        (
            "pause:for=1s,interval=2s,random=maybe",
            "bad value `maybe` for `random`",
        ),
        ("loss:p=0.1,flows=2", "bad value `2` for `flows`"),
        ("loss:model=gilbert", "`loss` needs `enter_bad`"),
        (
            "loss:model=gilbert,enter_bad=0.1,leave_bad=0.2,p=0.1",
            "not p",
        ),
        ("loss:p=0.1,leave_bad=0.2", "belongs to model=gilbert"),
        ("loss:model=markov,p=0.1", "bad value `markov` for `model`"),
        (
            "loss:model=gilbert,enter_bad=0,leave_bad=0.2",
            "never changes state",
        ),
        ("loss", "`loss` needs `p`"),
        ("loss:p=1.5", "bad value `1.5` for `p`"),
        ("loss:p=-0.1", "bad value `-0.1` for `p`"),
        ("loss:p=NaN", "bad value `NaN` for `p`"),
        ("loss:p=abc", "bad value `abc` for `p`"),
        ("loss:p=0.1,colour=red", "unknown key `colour`"),
        ("loss:p=0.1,p=0.2", "given twice"),
        (
            "loss:p=0.1,dst=10.0.0.0/33",
            "bad value `10.0.0.0/33` for `dst`",
        ),
        (
            "loss:p=0.1,src=300.1.1.1",
            "bad value `300.1.1.1` for `src`",
        ),
        ("loss:p=0.1,dport=70000", "bad value `70000` for `dport`"),
        ("loss:p=0.1,dport=90-80", "low end"),
        ("loss:p=0.1,sport=x", "bad value `x` for `sport`"),
        ("loss:p=0.1,dir=up", "bad value `up` for `dir`"),
        ("loss:p=0.1,proto=sctp", "bad value `sctp` for `proto`"),
        ("loss:p=0.1,proto=icmp,dport=1", "icmp has no ports"),
        ("loss:p=0.1,dport", "is not key=value"),
        ("loss:p=", "`p=` in `loss` has no value"),
        ("loss:p=1e-10", "resolution"),
        ("loss:p=0.9999999999", "resolution"),
        ("loss:p=1,dst=::ffff:127.0.0.1", "write 127.0.0.1"),
    ];
    for (text, want) in cases {
        let err = parse_fault(text).expect_err(text);
        assert!(
            err.to_string().contains(want),
            "{text}: got `{err}`, want `{want}`"
        );
        assert_eq!(err.class(), Class::BadInput);
    }
}

#[test]
fn durations_need_units() {
    assert_eq!(
        parse_duration("d", "250ms").unwrap(),
        Duration::from_millis(250)
    );
    assert_eq!(parse_duration("d", "5m").unwrap(), Duration::from_secs(300));
    assert_eq!(
        parse_duration("d", "250us").unwrap(),
        Duration::from_micros(250)
    );
    assert!(parse_duration("d", "365d").is_ok());
    for bad in [
        "10",
        "0s",
        "ten seconds",
        "-1s",
        "",
        "366d",
        "18446744073709551615s",
    ] {
        assert!(parse_duration("d", bad).is_err(), "{bad}");
    }
}

#[test]
fn control_characters_are_refused_without_being_quoted() {
    for (text, want) in [
        (
            "l\0oss:p=1",
            "a control or invisible character (U+0000) at character 2",
        ),
        ("loss:p=1,\ndport=53", "(U+000A) at character 10"),
        ("loss:p=1,dst=\u{1b}[2J", "(U+001B) at character 14"),
        ("l\u{202e}oss:p=1", "(U+202E) at character 2"),
        ("loss:p=1\n", "(U+000A) at character 9"),
    ] {
        let err = parse_fault(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
    }
}

#[test]
fn the_default_burst_of_a_huge_rate_is_a_burst_that_parses() {
    let spec = parse_fault("bandwidth:rate=11tbit").unwrap();
    assert_eq!(parse_fault(&spec.to_string()).unwrap(), spec, "{spec}");
    assert!(spec.to_string().ends_with("burst=1GiB"), "{spec}");
}

#[test]
fn a_spec_longer_than_any_real_one_is_refused_briefly() {
    let long = format!("loss:p=0.1,{}=1", "k".repeat(100_000));
    let err = parse_fault(&long).unwrap_err().to_string();
    assert!(err.contains("100013 characters long"), "{err}");
    assert!(err.len() < 200, "{err}");
    assert_eq!(super::shown(&long).chars().count(), 81);
    assert_eq!(super::shown("a\u{1b}b"), "a\\u{1b}b");
}
