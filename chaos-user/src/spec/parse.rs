//! From text to a typed spec: the keys each kind takes and what they mean together.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use super::{values::*, *};

const FILTER_KEYS: &[&str] = &["proto", "src", "dst", "sport", "dport", "flows"];

/// The keys each kind takes, as `--help` and error messages list them.
pub fn keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "loss" => &[
            "p",
            "dir",
            "model",
            "enter_bad",
            "leave_bad",
            "loss_bad",
            "loss_good",
            "proto",
            "src",
            "dst",
            "sport",
            "dport",
            "flows",
        ],
        "delay" => &[
            "time", "jitter", "proto", "src", "dst", "sport", "dport", "flows",
        ],
        "bandwidth" => &[
            "rate", "burst", "proto", "src", "dst", "sport", "dport", "flows",
        ],
        "corrupt" => &[
            "p", "bytes", "proto", "src", "dst", "sport", "dport", "flows",
        ],
        "duplicate" => &["p", "proto", "src", "dst", "sport", "dport", "flows"],
        "connect" => &["errno", "redirect", "p", "proto", "dst", "dport", "flows"],
        "reset" => &["interval", "src", "dst", "sport", "dport", "flows"],
        "dns" => &["name", "answer", "p", "flows"],
        "xdp-drop" => &["dev", "p", "proto", "src", "dst", "sport", "dport", "flows"],
        "pause" => &["for", "interval", "random", "seed"],
        "device" => &["major", "minor", "type", "access", "errno", "p"],
        "fd-limit" => &["p"],
        "crash" => &["syscall", "signal", "nth", "every", "p", "path"],
        "file" => &["op", "errno", "path", "nth", "every", "p"],
        "nospace" => &["path", "nth", "every", "p"],
        "fail" => &["syscall", "errno", "path", "nth", "every", "p"],
        "disk-fill" => &["path", "free", "use"],
        "page-cache" => &["path", "interval"],
        "cpu-throttle" => &["quota"],
        "cpu-hog" => &["workers", "load"],
        "memory-pressure" => &["size", "limit"],
        "memory-leak" => &["rate", "max", "then"],
        "io-stress" => &["path", "workers", "bytes"],
        "corrupt-file" => &["path", "mode", "count", "seed", "to", "offset", "len"],
        _ => FILTER_KEYS,
    }
}

/// The longest fault spec: far more than any real one.
pub const MAX_SPEC_CHARS: usize = 1024;

/// A character a message could not show as itself: control characters (a newline, a tab, an
/// escape) and the invisible ones that reorder or hide text (U+202E, U+200B, ...).
pub(super) fn unprintable(c: char) -> bool {
    c.is_control() || (c != ' ' && c.escape_debug().next() == Some('\\'))
}

/// Parses one fault spec. Pure: no system state is read.
pub fn parse_fault(text: &str) -> Result<FaultSpec, SpecError> {
    // Refused before any part is quoted back: a message must stay one plain, short line.
    let chars = text.chars().count();
    if chars > MAX_SPEC_CHARS {
        return Err(SpecError::TooLong { chars });
    }
    let text = text.trim_matches(' ');
    if text.is_empty() {
        return Err(SpecError::Empty);
    }
    if let Some((at, c)) = text.char_indices().find(|(_, c)| unprintable(*c)) {
        return Err(SpecError::ControlCharacter {
            code: c as u32,
            at: text[..at].chars().count() + 1,
        });
    }
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    let kind = kind.trim();
    if !KINDS.contains(&kind) {
        return Err(SpecError::UnknownKind(kind.to_string()));
    }
    let pairs = split_pairs(kind, rest)?;
    // An unknown key first: a misspelt key would otherwise show as a missing one.
    if let Some((key, _)) = pairs.iter().find(|(k, _)| !keys_of(kind).contains(k)) {
        return Err(SpecError::UnknownKey {
            kind: kind.to_string(),
            key: key.to_string(),
            known: keys_of(kind),
        });
    }
    let mut keys = Keys {
        kind,
        pairs: pairs.clone(),
    };
    let spec = match kind {
        "loss" => FaultSpec::Loss(parse_loss(&mut keys)?),
        "delay" => FaultSpec::Delay(parse_delay(&mut keys)?),
        "bandwidth" => FaultSpec::Bandwidth(parse_bandwidth(&mut keys)?),
        "corrupt" => {
            let p = keys.probability("p", "corrupt:p=0.01")?;
            let bytes = match keys.take("bytes") {
                None => 1,
                Some(v) => match v.parse::<u8>() {
                    Ok(n @ 1..=64) => n,
                    _ => return Err(bad("bytes", v, "expected a count of bytes from 1 to 64")),
                },
            };
            let (filter, flows) = keys.filter()?;
            FaultSpec::Corrupt(CorruptSpec {
                p,
                bytes,
                filter,
                flows,
            })
        }
        "duplicate" => {
            let p = keys.probability("p", "duplicate:p=0.05")?;
            let (filter, flows) = keys.filter()?;
            FaultSpec::Duplicate(DuplicateSpec { p, filter, flows })
        }
        "connect" => FaultSpec::Connect(parse_connect(&mut keys)?),
        "reset" => {
            let interval = keys.interval()?;
            let (filter, flows) = keys.filter()?;
            FaultSpec::Reset(ResetSpec {
                interval,
                src: filter.src,
                dst: filter.dst,
                sport: filter.sport,
                dport: filter.dport,
                flows,
            })
        }
        "dns" => FaultSpec::Dns(parse_dns(&mut keys)?),
        "xdp-drop" => {
            let Some(dev) = keys.take("dev") else {
                return Err(missing(kind, "dev", "xdp-drop:dev=eth0,p=0.1"));
            };
            if dev.len() >= 16 || dev.contains(['/', ' ']) {
                return Err(bad("dev", dev, "expected an interface name, such as eth0"));
            }
            let dev = dev.to_string();
            let p = keys.probability("p", "xdp-drop:dev=eth0,p=0.1")?;
            let (filter, flows) = keys.filter()?;
            FaultSpec::XdpDrop(XdpDropSpec {
                dev,
                p,
                filter,
                flows,
            })
        }
        "pause" => FaultSpec::Pause(parse_pause(&mut keys)?),
        "device" => FaultSpec::Device(parse_device(&mut keys)?),
        "crash" => FaultSpec::Crash(parse_crash(&mut keys)?),
        "fd-limit" => FaultSpec::FdLimit(FdLimitSpec {
            p: keys.probability("p", "")?,
        }),
        "file" => FaultSpec::File(parse_file(&mut keys)?),
        "nospace" => FaultSpec::Nospace(NospaceSpec {
            path: keys
                .take("path")
                .map(|v| parse_path("path", v))
                .transpose()?,
            when: keys.schedule(None)?,
        }),
        "fail" => FaultSpec::Fail(parse_fail(&mut keys)?),
        "disk-fill" => FaultSpec::DiskFill(parse_disk_fill(&mut keys)?),
        "corrupt-file" => FaultSpec::CorruptFile(parse_corrupt_file(&mut keys)?),
        "io-stress" => {
            let path =
                keys.required("path", "io-stress:path=/var/lib/app,workers=2,bytes=64MiB")?;
            let path = parse_path("path", path)?;
            let workers = keys.workers()?;
            let bytes = match keys.take("bytes") {
                None => 64 << 20,
                Some(v) => parse_nonzero_size("bytes", v)?,
            };
            FaultSpec::IoStress(IoStressSpec {
                path,
                workers,
                bytes,
            })
        }
        "cpu-hog" => {
            let workers = keys.workers()?;
            let load = match keys.take("load") {
                None => 100.0,
                Some(v) => parse_percent("load", v)?,
            };
            FaultSpec::CpuHog(CpuHogSpec { workers, load })
        }
        "cpu-throttle" => {
            let text = keys.required("quota", "cpu-throttle:quota=20%")?;
            let quota = parse_percent("quota", text)?;
            // The kernel's smallest quota is 1 ms of its 100 ms period.
            if quota < 1.0 {
                return Err(bad(
                    "quota",
                    text,
                    "expected at least 1%: the smallest quota is 1 ms per 100 ms period",
                ));
            }
            FaultSpec::CpuThrottle(CpuThrottleSpec { quota })
        }
        "memory-pressure" => {
            let size = keys.take("size").map(|v| parse_nonzero_size("size", v));
            let limit = keys.take("limit").map(|v| parse_nonzero_size("limit", v));
            FaultSpec::MemoryPressure(match (size, limit) {
                (Some(size), None) => MemoryPressureSpec::Size(size?),
                (None, Some(limit)) => MemoryPressureSpec::Limit(limit?),
                (None, None) => {
                    return Err(SpecError::MissingOneOf {
                        kind: keys.kind.to_string(),
                        keys: "`size`, `limit`",
                        example: "memory-pressure:size=512MiB",
                    });
                }
                (Some(_), Some(_)) => {
                    return Err(SpecError::Conflict(
                        "give size or limit, not both: a stressor that holds memory, or a \
                         lower limit"
                            .into(),
                    ));
                }
            })
        }
        "memory-leak" => {
            let example = "memory-leak:rate=10MiB/s,max=1GiB";
            let rate = keys.required("rate", example)?;
            let per_second = rate
                .strip_suffix("/s")
                .ok_or_else(|| bad("rate", rate, "expected a size per second, such as 10MiB/s"))?;
            let rate = parse_nonzero_size("rate", per_second)?;
            let max = parse_nonzero_size("max", keys.required("max", example)?)?;
            let release = match keys.take("then") {
                None | Some("hold") => false,
                Some("release") => true,
                Some(v) => return Err(bad("then", v, "expected hold or release")),
            };
            FaultSpec::MemoryLeak(MemoryLeakSpec { rate, max, release })
        }
        "page-cache" => {
            let path = keys.required("path", "page-cache:path=/var/lib/app,interval=1s")?;
            let path = parse_path("path", path)?;
            let interval = keys.interval()?;
            FaultSpec::PageCache(PageCacheSpec { path, interval })
        }
        _ => return Err(SpecError::UnknownKind(kind.to_string())),
    };
    keys.finish()?;
    Ok(spec)
}

/// The key=value pairs of one spec, taken one by one by the kind's parser; any left over at
/// the end is an unknown key.
struct Keys<'a> {
    kind: &'a str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Keys<'a> {
    fn take(&mut self, key: &str) -> Option<&'a str> {
        let at = self.pairs.iter().position(|(k, _)| *k == key)?;
        Some(self.pairs.remove(at).1)
    }

    /// An optional `interval` between rounds that walk sockets or files: at least 100 ms.
    fn interval(&mut self) -> Result<Option<Duration>, SpecError> {
        let Some(v) = self.take("interval") else {
            return Ok(None);
        };
        match parse_duration("interval", v)? {
            i if i < MIN_RESET_INTERVAL => Err(bad("interval", v, "at least 100ms")),
            i => Ok(Some(i)),
        }
    }

    /// `workers`: how many stressor processes, 1 by default.
    fn workers(&mut self) -> Result<u32, SpecError> {
        match self.take("workers") {
            None => Ok(1),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| bad("workers", v, "expected 1 to 1024 stressor processes")),
        }
    }

    /// A key the kind cannot do without; `example` shows a whole spec that has it.
    fn required(&mut self, key: &'static str, example: &'static str) -> Result<&'a str, SpecError> {
        self.take(key)
            .ok_or_else(|| missing(self.kind, key, example))
    }

    /// A required probability, or 1 when `example` is empty and the key is missing.
    fn probability(&mut self, key: &'static str, example: &'static str) -> Result<f64, SpecError> {
        match self.take(key) {
            Some(v) => parse_probability(key, v),
            None if example.is_empty() => Ok(1.0),
            None => Err(missing(self.kind, key, example)),
        }
    }

    /// The shared filter keys and `flows`.
    fn filter(&mut self) -> Result<(PacketFilter, f64), SpecError> {
        let mut filter = PacketFilter {
            proto: Proto::Any,
            src: None,
            dst: None,
            sport: None,
            dport: None,
        };
        for key in ["proto", "src", "dst", "sport", "dport"] {
            if let Some(value) = self.take(key) {
                parse_filter_key(&mut filter, key, value)?;
            }
        }
        check_filter(&filter)?;
        let flows = match self.take("flows") {
            None => 1.0,
            Some(v) => {
                let share = parse_probability("flows", v)?;
                if share == 0.0 {
                    return Err(bad("flows", v, "a share of flows above 0, such as 0.3"));
                }
                share
            }
        };
        Ok((filter, flows))
    }

    /// `nth`, `every` or `p`: which calls a fault acts on. Without any: every call when
    /// `example` is None, else the fault needs one.
    fn schedule(&mut self, example: Option<&'static str>) -> Result<Schedule, SpecError> {
        let count = |key: &str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad(key, v, "expected a count of calls from 1, such as 1000"))
        };
        let nth = self.take("nth").map(|v| count("nth", v)).transpose()?;
        let every = self.take("every").map(|v| count("every", v)).transpose()?;
        let p = self
            .take("p")
            .map(|v| parse_probability("p", v))
            .transpose()?;
        Ok(match (nth, every, p) {
            (Some(n), None, None) => Schedule::Nth(n),
            (None, Some(n), None) => Schedule::Every(n),
            (None, None, Some(p)) => Schedule::P(p),
            (None, None, None) => match example {
                None => Schedule::P(1.0),
                Some(example) => {
                    return Err(SpecError::MissingOneOf {
                        kind: self.kind.to_string(),
                        keys: "`nth`, `every`, `p`",
                        example,
                    });
                }
            },
            _ => {
                return Err(SpecError::Conflict(
                    "give one of nth, every and p: they are three ways to pick the calls".into(),
                ));
            }
        })
    }

    fn finish(self) -> Result<(), SpecError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(SpecError::UnknownKey {
                kind: self.kind.to_string(),
                key: key.to_string(),
                known: keys_of(self.kind),
            }),
        }
    }
}

fn missing(kind: &str, key: &'static str, example: &'static str) -> SpecError {
    SpecError::MissingKey {
        kind: kind.to_string(),
        key,
        example,
    }
}

fn split_pairs<'a>(kind: &str, rest: &'a str) -> Result<Vec<(&'a str, &'a str)>, SpecError> {
    let mut seen = BTreeSet::new();
    let mut pairs = Vec::new();
    if rest.trim().is_empty() {
        return Ok(pairs);
    }
    for item in rest.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(SpecError::NotKeyValue {
                kind: kind.to_string(),
                item: item.to_string(),
            });
        };
        let (key, value) = (key.trim(), value.trim());
        if !key.is_empty() && value.is_empty() {
            return Err(SpecError::EmptyValue {
                kind: kind.to_string(),
                key: key.to_string(),
            });
        }
        if key.is_empty() {
            return Err(SpecError::NotKeyValue {
                kind: kind.to_string(),
                item: item.to_string(),
            });
        }
        if !seen.insert(key) {
            return Err(SpecError::DuplicateKey {
                kind: kind.to_string(),
                key: key.to_string(),
            });
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// The shortest `reset` and `page-cache` interval: each round walks sockets or files.
const MIN_RESET_INTERVAL: Duration = Duration::from_millis(100);

const GILBERT_EXAMPLE: &str = "loss:model=gilbert,enter_bad=0.01,leave_bad=0.3";

fn parse_loss(keys: &mut Keys) -> Result<LossSpec, SpecError> {
    let dir = keys.take("dir").map(parse_direction).transpose()?;
    let model = match keys.take("model") {
        None | Some("bernoulli") => None,
        Some("gilbert") => Some(()),
        Some(v) => return Err(bad("model", v, "expected bernoulli or gilbert")),
    };
    let gilbert_keys = ["enter_bad", "leave_bad", "loss_bad", "loss_good"];
    let (p, model) = if model.is_some() {
        if keys.take("p").is_some() {
            return Err(SpecError::Conflict(
                "model=gilbert takes enter_bad, leave_bad, loss_bad and loss_good, not p".into(),
            ));
        }
        let enter_bad = keys.probability("enter_bad", GILBERT_EXAMPLE)?;
        let leave_bad = keys.probability("leave_bad", GILBERT_EXAMPLE)?;
        if leave_bad == 0.0 || enter_bad == 0.0 {
            return Err(SpecError::Conflict(
                "with enter_bad=0 or leave_bad=0 a flow never changes state; \
                 for loss without bursts, use p"
                    .into(),
            ));
        }
        let loss_bad = keys.probability("loss_bad", "")?;
        let loss_good = match keys.take("loss_good") {
            Some(v) => parse_probability("loss_good", v)?,
            None => 0.0,
        };
        let model = LossModel::Gilbert {
            enter_bad,
            leave_bad,
            loss_bad,
            loss_good,
        };
        (model.theory(0.0).0, model)
    } else {
        if let Some(key) = gilbert_keys.iter().find(|k| keys.take(k).is_some()) {
            return Err(SpecError::Conflict(format!(
                "`{key}` belongs to model=gilbert; add model=gilbert or leave it out"
            )));
        }
        (keys.probability("p", "loss:p=0.1")?, LossModel::Bernoulli)
    };
    let (filter, flows) = keys.filter()?;
    Ok(LossSpec {
        p,
        dir: dir.unwrap_or(Direction::Both),
        model,
        filter,
        flows,
    })
}

fn parse_crash(keys: &mut Keys) -> Result<CrashSpec, SpecError> {
    let example = "crash:syscall=fsync,nth=1000,signal=SIGKILL";
    let syscall = keys.required("syscall", example)?;
    let syscall = parse_syscall("syscall", syscall)?;
    let signal = match keys.take("signal") {
        None => parse_signal("signal", "SIGKILL")?,
        Some(v) => parse_signal("signal", v)?,
    };
    let when = keys.schedule(Some(example))?;
    let path = keys
        .take("path")
        .map(|v| parse_path("path", v))
        .transpose()?;
    let with_path = FD_SYSCALLS.contains(&syscall.name)
        || FAIL_SYSCALLS
            .iter()
            .any(|(name, _, paths)| *name == syscall.name && *paths);
    if path.is_some() && !with_path {
        let mut names: Vec<&str> = FAIL_SYSCALLS
            .iter()
            .filter(|(_, _, paths)| *paths)
            .map(|(name, _, _)| *name)
            .chain(FD_SYSCALLS.iter().copied())
            .collect();
        names.sort();
        names.dedup();
        return Err(SpecError::Conflict(format!(
            "crash with path= works on syscalls that act on a file ({}); {} is not one",
            names.join(", "),
            syscall.name
        )));
    }
    Ok(CrashSpec {
        syscall,
        signal,
        when,
        path,
    })
}

fn parse_file(keys: &mut Keys) -> Result<FileSpec, SpecError> {
    let ops = match keys.take("op") {
        None | Some("any") => FileOp::ALL.to_vec(),
        Some(given) => {
            let mut ops = Vec::new();
            for name in given.split('+') {
                let op = FileOp::ALL
                    .into_iter()
                    .find(|op| op.name() == name)
                    .ok_or_else(|| {
                        bad(
                            "op",
                            given,
                            "expected open, read, write, create, unlink or any, or several \
                             joined by +, such as create+write",
                        )
                    })?;
                if !ops.contains(&op) {
                    ops.push(op);
                }
            }
            ops.sort();
            ops
        }
    };
    let errno = parse_errno("errno", keys.take("errno").unwrap_or("EIO"))?;
    Ok(FileSpec {
        ops,
        errno,
        path: keys
            .take("path")
            .map(|v| parse_path("path", v))
            .transpose()?,
        when: keys.schedule(None)?,
    })
}

fn parse_disk_fill(keys: &mut Keys) -> Result<DiskFillSpec, SpecError> {
    let example = "disk-fill:path=/var/lib/app,free=100MiB";
    let path = parse_path("path", keys.required("path", example)?)?;
    let free = keys
        .take("free")
        .map(|v| parse_size("free", v))
        .transpose()?;
    let used = keys
        .take("use")
        .map(|v| parse_percent("use", v))
        .transpose()?;
    let leave = match (free, used) {
        (Some(free), None) => Leave::Free(free),
        (None, Some(used)) => Leave::Use(used),
        (None, None) => {
            return Err(SpecError::MissingOneOf {
                kind: keys.kind.to_string(),
                keys: "`free`, `use`",
                example,
            });
        }
        (Some(_), Some(_)) => {
            return Err(SpecError::Conflict(
                "give free or use, not both: they are two ways to say how full".into(),
            ));
        }
    };
    Ok(DiskFillSpec { path, leave })
}

/// A size above zero.
fn parse_nonzero_size(key: &str, value: &str) -> Result<u64, SpecError> {
    match parse_size(key, value)? {
        0 => Err(bad(key, value, "expected a size above 0, such as 64MiB")),
        n => Ok(n),
    }
}

fn parse_corrupt_file(keys: &mut Keys) -> Result<CorruptFileSpec, SpecError> {
    let example = "corrupt-file:path=/var/lib/app/db,mode=torn,offset=8KiB,len=4KiB";
    let path = parse_path("path", keys.required("path", example)?)?;
    let size =
        |keys: &mut Keys, key: &'static str| keys.take(key).map(|v| parse_size(key, v)).transpose();
    let mode = match keys.take("mode").unwrap_or("bitflip") {
        "bitflip" => {
            let count = match keys.take("count") {
                None => 1,
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=1 << 20).contains(n))
                    .ok_or_else(|| bad("count", v, "expected a count of bits from 1, such as 8"))?,
            };
            let seed = keys
                .take("seed")
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| bad("seed", v, "expected a whole number"))
                })
                .transpose()?;
            CorruptMode::Bitflip { count, seed }
        }
        "truncate" => CorruptMode::Truncate {
            to: size(keys, "to")?.ok_or_else(|| missing(keys.kind, "to", example))?,
        },
        mode @ ("torn" | "zero-range") => {
            let offset =
                size(keys, "offset")?.ok_or_else(|| missing(keys.kind, "offset", example))?;
            let len = size(keys, "len")?.ok_or_else(|| missing(keys.kind, "len", example))?;
            if len == 0 {
                return Err(bad("len", "0", "expected a length above 0, such as 4KiB"));
            }
            if mode == "torn" {
                CorruptMode::Torn { offset, len }
            } else {
                CorruptMode::ZeroRange { offset, len }
            }
        }
        other => {
            return Err(bad(
                "mode",
                other,
                "expected bitflip, truncate, torn or zero-range",
            ));
        }
    };
    // Keys of another mode are a mistake, not something to ignore.
    if let Some((key, _)) = keys.pairs.first() {
        if ["count", "seed", "to", "offset", "len"].contains(key) {
            return Err(SpecError::Conflict(format!(
                "`{key}` does not go with mode={}",
                match mode {
                    CorruptMode::Bitflip { .. } => "bitflip",
                    CorruptMode::Truncate { .. } => "truncate",
                    CorruptMode::Torn { .. } => "torn",
                    CorruptMode::ZeroRange { .. } => "zero-range",
                }
            )));
        }
    }
    Ok(CorruptFileSpec { path, mode })
}

fn parse_fail(keys: &mut Keys) -> Result<FailSpec, SpecError> {
    let example = "fail:syscall=fork,errno=EAGAIN";
    let syscall = keys.required("syscall", example)?;
    let syscall = parse_fail_syscall("syscall", syscall)?;
    let errno = keys.required("errno", example)?;
    let errno = parse_errno("errno", errno)?;
    let path = keys
        .take("path")
        .map(|v| parse_path("path", v))
        .transpose()?;
    let spec = FailSpec {
        syscall,
        errno,
        path,
        when: keys.schedule(None)?,
    };
    let with_path = FAIL_SYSCALLS
        .iter()
        .any(|(name, _, paths)| *name == syscall && *paths);
    if spec.path.is_some() && !with_path {
        return Err(SpecError::Conflict(format!(
            "path= does not apply to {syscall}: its hook sees no file"
        )));
    }
    Ok(spec)
}

fn parse_device(keys: &mut Keys) -> Result<DeviceSpec, SpecError> {
    let number = |key: &str, v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n < if key == "major" { 1 << 12 } else { 1 << 20 })
            .ok_or_else(|| {
                bad(
                    key,
                    v,
                    "expected a device number, such as 1 (ls -l /dev shows them)",
                )
            })
    };
    let major = keys.required("major", "device:major=1,minor=5,errno=EIO")?;
    let major = number("major", major)?;
    let minor = keys.take("minor").map(|v| number("minor", v)).transpose()?;
    let kind = match keys.take("type") {
        None => DeviceKind::Any,
        Some("char") => DeviceKind::Char,
        Some("block") => DeviceKind::Block,
        Some(v) => return Err(bad("type", v, "expected char or block")),
    };
    let given = keys.take("access").unwrap_or("");
    if !given.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(bad(
            "access",
            given,
            "expected r, w and m (read, write, mknod), such as rw",
        ));
    }
    // In one order, once each.
    let access: String = ['r', 'w', 'm']
        .into_iter()
        .filter(|c| given.contains(*c))
        .collect();
    let errno = match keys.take("errno") {
        None => parse_errno("errno", "EPERM")?,
        Some(v) => parse_errno("errno", v)?,
    };
    let p = keys.probability("p", "")?;
    Ok(DeviceSpec {
        major,
        minor,
        kind,
        access,
        errno,
        p,
    })
}

fn parse_pause(keys: &mut Keys) -> Result<PauseSpec, SpecError> {
    let example = "pause:for=200ms,interval=2s";
    let length = keys.required("for", example)?;
    let length = parse_duration("for", length)?;
    let interval = keys.required("interval", example)?;
    let interval = parse_duration("interval", interval)?;
    if length >= interval {
        return Err(SpecError::Conflict(
            "a pause's `for` must be shorter than its `interval`, or the cgroup never runs".into(),
        ));
    }
    if length < MIN_PAUSE {
        return Err(bad(
            "for",
            &humantime::format_duration(length).to_string(),
            "at least 1ms",
        ));
    }
    let random = match keys.take("random") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(bad("random", v, "expected true or false")),
    };
    let seed = match keys.take("seed") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad("seed", v, "expected a whole number, such as 42"))?,
        ),
    };
    if seed.is_some() && !random {
        return Err(SpecError::Conflict(
            "seed picks the moments of random=true; a regular pause has none".into(),
        ));
    }
    Ok(PauseSpec {
        length,
        interval,
        random,
        seed,
    })
}

/// The shortest pause: the freezer takes some time to settle.
const MIN_PAUSE: Duration = Duration::from_millis(1);

fn parse_delay(keys: &mut Keys) -> Result<DelaySpec, SpecError> {
    let time = keys.required("time", "delay:time=100ms,jitter=10ms")?;
    let text = time;
    let time = parse_duration("time", text)?;
    if time > MAX_DELAY {
        return Err(bad("time", text, "at most 60s"));
    }
    let jitter = match keys.take("jitter") {
        None => Duration::ZERO,
        Some(v) => parse_duration("jitter", v)?,
    };
    if jitter > time {
        return Err(SpecError::Conflict(
            "jitter is spread on both sides of time, so it cannot be larger than time".into(),
        ));
    }
    let (filter, flows) = keys.filter()?;
    Ok(DelaySpec {
        time,
        jitter,
        filter,
        flows,
    })
}

/// The largest token bucket of `bandwidth`.
const MAX_BURST: u64 = 1 << 30;

fn parse_bandwidth(keys: &mut Keys) -> Result<BandwidthSpec, SpecError> {
    let rate = keys.required("rate", "bandwidth:rate=1mbit")?;
    let rate = parse_rate("rate", rate)?;
    let burst = match keys.take("burst") {
        // Ten milliseconds at the rate, and at least one full-size packet of loopback; no
        // more than a burst may be given.
        None => (rate / 100).clamp(64 * 1024, MAX_BURST),
        Some(v) => {
            let burst = parse_size("burst", v)?;
            if burst == 0 || burst > MAX_BURST {
                return Err(bad("burst", v, "between 1 byte and 1GiB"));
            }
            burst
        }
    };
    let (filter, flows) = keys.filter()?;
    Ok(BandwidthSpec {
        rate,
        burst,
        filter,
        flows,
    })
}

fn parse_connect(keys: &mut Keys) -> Result<ConnectSpec, SpecError> {
    let errno = keys.take("errno");
    let redirect = keys.take("redirect");
    let outcome = match (errno, redirect) {
        (Some(e), None) => ConnectOutcome::Errno(parse_errno("errno", e)?),
        (None, Some(r)) => {
            let to: SocketAddr = r.parse().map_err(|_| {
                bad(
                    "redirect",
                    r,
                    "expected ADDR:PORT, such as 127.0.0.1:8080 or [::1]:8080",
                )
            })?;
            ConnectOutcome::Redirect(to)
        }
        (Some(_), Some(_)) => {
            return Err(SpecError::Conflict(
                "give errno or redirect, not both".into(),
            ));
        }
        (None, None) => {
            return Err(missing(
                keys.kind,
                "errno",
                "connect:errno=ECONNREFUSED,dport=5432",
            ));
        }
    };
    let p = keys.probability("p", "")?;
    let (filter, flows) = keys.filter()?;
    if filter.proto == Proto::Icmp {
        return Err(bad("proto", "icmp", "connect takes proto=tcp, udp or any"));
    }
    if let (ConnectOutcome::Redirect(to), Some(dst)) = (outcome, filter.dst) {
        if to.is_ipv4() != dst.addr().is_ipv4() {
            return Err(SpecError::Conflict(format!(
                "redirect={to} and dst={dst} are of different address families; a socket can \
                 only be sent to an address of its own family"
            )));
        }
    }
    Ok(ConnectSpec {
        p,
        outcome,
        proto: filter.proto,
        dst: filter.dst,
        dport: filter.dport,
        flows,
    })
}

fn parse_dns(keys: &mut Keys) -> Result<DnsSpec, SpecError> {
    let name = keys.take("name").unwrap_or("*");
    let valid = name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '.' | '-' | '_'));
    if !valid {
        return Err(bad(
            "name",
            name,
            "expected a name or a glob of letters, digits, `-`, `.` and `*`, such as *.example.com",
        ));
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let answer = keys.required("answer", "dns:name=*.example.com,answer=nxdomain")?;
    let answer = match answer.to_ascii_lowercase().as_str() {
        "nxdomain" => DnsAnswer::Nxdomain,
        "servfail" => DnsAnswer::Servfail,
        "refused" => DnsAnswer::Refused,
        "timeout" => DnsAnswer::Timeout,
        other => DnsAnswer::Addr(other.parse().map_err(|_| {
            bad(
                "answer",
                answer,
                "expected nxdomain, servfail, refused, timeout or an address",
            )
        })?),
    };
    let p = keys.probability("p", "")?;
    let flows = match keys.take("flows") {
        None => 1.0,
        Some(v) => parse_probability("flows", v)?,
    };
    Ok(DnsSpec {
        name: if name.is_empty() { "*".into() } else { name },
        answer,
        p,
        flows,
    })
}

/// Sets `filter` from one of the shared filter keys; returns false for any other key.
fn parse_filter_key(filter: &mut PacketFilter, key: &str, value: &str) -> Result<bool, SpecError> {
    match key {
        "proto" => filter.proto = parse_proto(value)?,
        "src" => filter.src = Some(parse_net(key, value)?),
        "dst" => filter.dst = Some(parse_net(key, value)?),
        "sport" => filter.sport = Some(parse_ports(key, value)?),
        "dport" => filter.dport = Some(parse_ports(key, value)?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn check_filter(filter: &PacketFilter) -> Result<(), SpecError> {
    if let (Some(src), Some(dst)) = (filter.src, filter.dst) {
        if src.addr().is_ipv4() != dst.addr().is_ipv4() {
            return Err(SpecError::Conflict(format!(
                "src={src} and dst={dst} are of different address families, so no packet could match"
            )));
        }
    }
    let has_ports = filter.sport.is_some() || filter.dport.is_some();
    if has_ports && matches!(filter.proto, Proto::Icmp) {
        return Err(SpecError::Conflict(
            "sport/dport need proto=tcp, proto=udp or no proto; icmp has no ports".to_string(),
        ));
    }
    Ok(())
}
