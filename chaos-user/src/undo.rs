//! The undo log: everything a session does that the kernel would not undo by itself when the
//! process dies is written here first, so that `chaos-user recover` (or the next start) can
//! undo what a killed session left.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Version of the record format on disk.
const SCHEMA_VERSION: u32 = 1;

/// Where undo logs live: `CHAOS_USER_RUNTIME_DIR` (made absolute), else `/run/chaos-user`.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("CHAOS_USER_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => std::path::absolute(&dir).unwrap_or_else(|_| dir.into()),
        _ => PathBuf::from("/run/chaos-user"),
    }
}

/// One thing to undo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Entry {
    /// A transient cgroup that `run` or an experiment created; removed once its processes are
    /// gone. With `kill`, undoing it kills them first (an experiment's own processes).
    Cgroup {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        kill: bool,
    },
    /// An experiment's own directory (`{tmp}`), removed with what is in it.
    RunDir { path: PathBuf },
    /// An egress tc filter attached over netlink (kernels without tcx).
    TcFilter {
        interface: String,
        priority: u16,
        handle: u32,
        /// The id of the program the filter runs, so that a filter another session made later
        /// at the same place is never taken for this one.
        program_id: u32,
        /// The network namespace of the interface, by inode, when not the injector's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<u64>,
    },
    /// A clsact qdisc that the session added to an interface (kernels without tcx).
    ClsactQdisc {
        interface: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<u64>,
    },
    /// A cgroup that `pause` freezes from time to time; thawed when undone.
    Frozen { cgroup: PathBuf },
    /// Pacing caps that `bandwidth` sets on the target's TCP connections, at these rates; they
    /// stay on the sockets until lifted.
    PacingCaps { cgroup: PathBuf, rates: Vec<u64> },
    /// A v1 group (hybrid layouts) that a session moved the target's processes into, for a
    /// limit; undone by moving each process back to the group it came from (`origins`, by PID;
    /// the group's parent for any other) and removing the group.
    Moved {
        group: PathBuf,
        origins: Vec<(i32, PathBuf)>,
    },
    /// A cgroup limit (`cpu.max`, `memory.max`, or on a v1 group `cpu.cfs_quota_us`,
    /// `cpu.cfs_period_us`, `memory.limit_in_bytes`) lowered by `cpu-throttle` or
    /// `memory-pressure`; `previous` is written back when undone.
    Limit { file: PathBuf, previous: String },
    /// A file of `disk-fill` that takes a filesystem's free space; removed when undone.
    Fill { file: PathBuf },
    /// An `fq` root qdisc that `delay` put in place of the interface's default one; removing
    /// it brings the default back.
    FqQdisc {
        interface: String,
        /// The qdisc's major handle, so that a qdisc someone made since is never removed.
        handle: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<u64>,
    },
}

impl Entry {
    /// The network namespace the entry lives in, when not the injector's.
    fn netns(&self) -> Option<u64> {
        match self {
            Entry::Cgroup { .. }
            | Entry::RunDir { .. }
            | Entry::PacingCaps { .. }
            | Entry::Frozen { .. }
            | Entry::Fill { .. }
            | Entry::Moved { .. }
            | Entry::Limit { .. } => None,
            Entry::TcFilter { netns, .. }
            | Entry::ClsactQdisc { netns, .. }
            | Entry::FqQdisc { netns, .. } => *netns,
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Cgroup { path, kill: false } => write!(f, "cgroup {}", path.display()),
            Entry::Cgroup { path, kill: true } => {
                write!(f, "cgroup {} (and its processes)", path.display())
            }
            Entry::RunDir { path } => write!(f, "experiment directory {}", path.display()),
            Entry::Frozen { cgroup } => write!(f, "the freeze of cgroup {}", cgroup.display()),
            Entry::Fill { file } => write!(f, "disk-fill file {}", file.display()),
            Entry::Moved { group, origins } => write!(
                f,
                "v1 group {} (its processes back to where they were; {} moved in)",
                group.display(),
                origins.len()
            ),
            Entry::Limit { file, previous } => {
                write!(f, "the limit {} (back to {previous})", file.display())
            }
            Entry::PacingCaps { cgroup, .. } => {
                write!(f, "TCP pacing caps in cgroup {}", cgroup.display())
            }
            Entry::TcFilter {
                interface,
                priority,
                handle,
                ..
            } => {
                write!(
                    f,
                    "tc filter on {interface} egress (priority {priority}, handle {handle})"
                )
            }
            Entry::ClsactQdisc { interface, .. } => write!(f, "clsact qdisc on {interface}"),
            Entry::FqQdisc {
                interface, handle, ..
            } => {
                write!(f, "fq root qdisc {handle:x}: on {interface}")
            }
        }?;
        match self.netns() {
            Some(inode) => write!(f, " in network namespace {inode}"),
            None => Ok(()),
        }
    }
}

/// What undoing one entry came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Undone now.
    Undone,
    /// Nothing was left to undo.
    AlreadyGone,
    /// Left in place on purpose, no longer this session's to remove; the reason says why.
    Kept(String),
    /// Cannot be undone yet; the reason says what it waits for.
    Pending(String),
}

/// Undoes one entry. Running it twice is harmless.
pub fn undo(entry: &Entry) -> Result<Outcome> {
    let Some(inode) = entry.netns() else {
        return undo_here(entry);
    };
    // A namespace that nothing holds any more took its interfaces and qdiscs with it.
    let Some(ns) = crate::netns::Netns::find(inode) else {
        return Ok(Outcome::AlreadyGone);
    };
    ns.run(|| undo_here(entry))
        .with_context(|| format!("enter network namespace {inode}"))?
}

fn undo_here(entry: &Entry) -> Result<Outcome> {
    match entry {
        Entry::Cgroup { path, kill } => {
            // Only what `run` makes: a log that names anything else is not to be trusted.
            let ours = crate::cgroup::is_below_cgroup2(path)
                && path.file_name().is_some_and(|n| {
                    n.to_string_lossy()
                        .starts_with(crate::cgroup::RUN_CGROUP_PREFIX)
                });
            if !ours {
                return Ok(damaged(path, "a cgroup that chaos-user makes"));
            }
            if !path.exists() {
                return Ok(Outcome::AlreadyGone);
            }
            if *kill {
                crate::cgroup::empty(path, std::time::Duration::from_secs(2));
            }
            let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<&str> = procs.split_whitespace().collect();
            if !pids.is_empty() {
                return Ok(Outcome::Pending(format!(
                    "processes remain in it: {}",
                    pids.join(" ")
                )));
            }
            remove_group(path)
        }
        Entry::RunDir { path } => {
            let ours = path.parent() == Some(std::env::temp_dir().as_path())
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("chaos-experiment-"));
            if !ours {
                return Ok(damaged(path, "a directory that an experiment makes"));
            }
            match fs::remove_dir_all(path) {
                Ok(()) => Ok(Outcome::Undone),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::AlreadyGone),
                Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
            }
        }
        Entry::Moved { group, origins } => {
            let ours = crate::cgroup::v1::is_our_group(group);
            if !ours {
                return Ok(damaged(group, "a v1 group that chaos-user makes"));
            }
            if !group.exists() {
                return Ok(Outcome::AlreadyGone);
            }
            let home = group.parent().unwrap_or(group);
            for pid in crate::cgroup::v1::procs(group) {
                // Back where it (or the process it was forked from) came from, or where the
                // group is, when that is gone.
                let origin = crate::cgroup::v1::origin_of(pid, origins);
                let back = origin
                    .as_deref()
                    .filter(|o| o == &home || crate::cgroup::is_below(o, home))
                    .filter(|o| o.join("cgroup.procs").exists())
                    .unwrap_or(home);
                crate::cgroup::v1::move_to(back, pid)
                    .with_context(|| format!("move process {pid} back to {}", back.display()))?;
            }
            remove_group(group)
        }
        Entry::Frozen { cgroup } => {
            if !crate::cgroup::is_below_cgroup2(cgroup) {
                return Ok(damaged(cgroup, "a cgroup below the cgroup2 mount"));
            }
            if !cgroup.exists() {
                return Ok(Outcome::AlreadyGone);
            }
            crate::pause::set_frozen(cgroup, false)
                .with_context(|| format!("thaw {}", cgroup.display()))?;
            Ok(Outcome::Undone)
        }
        Entry::Limit { file, previous } => {
            // cgroup2 limits of any cgroup; v1 limits only of the groups chaos-user makes.
            let name = file.file_name().unwrap_or_default();
            let ours = if name == "cpu.max" || name == "memory.max" {
                crate::cgroup::is_below_cgroup2(file)
            } else {
                crate::cgroup::v1::LIMIT_FILES.iter().any(|f| name == *f)
                    && file.parent().is_some_and(crate::cgroup::v1::is_our_group)
            };
            if !ours {
                return Ok(damaged(file, "a limit that chaos-user lowers"));
            }
            if !file.exists() {
                return Ok(Outcome::AlreadyGone);
            }
            fs::write(file, previous)
                .with_context(|| format!("write {previous} back to {}", file.display()))?;
            Ok(Outcome::Undone)
        }
        Entry::Fill { file } => {
            if !crate::fill::is_fill_file(file) {
                return Ok(damaged(file, "a file that disk-fill makes"));
            }
            // Never made (a read-only filesystem refuses even the removal of nothing).
            if fs::symlink_metadata(file).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
                return Ok(Outcome::AlreadyGone);
            }
            match fs::remove_file(file) {
                Ok(()) => Ok(Outcome::Undone),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Outcome::AlreadyGone),
                Err(e) => Err(e).with_context(|| format!("remove {}", file.display())),
            }
        }
        Entry::PacingCaps { cgroup, rates } => {
            if !crate::cgroup::is_below_cgroup2(cgroup) {
                return Ok(damaged(cgroup, "a cgroup below the cgroup2 mount"));
            }
            if !cgroup.exists() {
                return Ok(Outcome::AlreadyGone);
            }
            crate::pacing::lift_caps(cgroup, rates)
                .with_context(|| format!("lift the pacing caps in {}", cgroup.display()))?;
            Ok(Outcome::Undone)
        }
        Entry::TcFilter {
            interface,
            priority,
            handle,
            program_id,
            ..
        } => crate::tc::undo_filter(interface, *priority, *handle, *program_id),
        Entry::ClsactQdisc { interface, .. } => crate::tc::undo_qdisc(interface),
        Entry::FqQdisc {
            interface, handle, ..
        } => crate::tc::undo_fq(interface, *handle),
    }
}

/// What to say of an entry that names what chaos-user never makes.
fn damaged(path: &std::path::Path, what: &str) -> Outcome {
    Outcome::Kept(format!(
        "{} is not {what}; the undo log is damaged, so it is left alone",
        path.display()
    ))
}

/// Removes a cgroup directory of ours that holds no process; one that still has groups or
/// processes below it waits.
fn remove_group(path: &std::path::Path) -> Result<Outcome> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(Outcome::Undone),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::AlreadyGone),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Outcome::Pending(
            "processes remain in the groups below it".to_string(),
        )),
        Err(e) => Err(e).with_context(|| format!("remove cgroup {}", path.display())),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    schema_version: u32,
    pid: u32,
    /// The process's start time in clock ticks after boot, to tell it from a reused PID.
    start_time: u64,
    entries: Vec<Entry>,
}

/// The live session's own undo log.
#[derive(Debug)]
pub struct UndoLog {
    path: PathBuf,
    record: Record,
}

impl UndoLog {
    /// Opens this process's log; nothing is written until the first entry, but a runtime
    /// directory that others may write is refused at once, before anything is done.
    pub fn new() -> Result<UndoLog> {
        private_dir(&runtime_dir())?;
        let pid = std::process::id();
        let start_time = process_start_time(pid)
            .with_context(|| format!("read the start time of process {pid}"))?;
        Ok(UndoLog {
            path: runtime_dir().join(format!("session-{pid}.json")),
            record: Record {
                schema_version: SCHEMA_VERSION,
                pid,
                start_time,
                entries: Vec::new(),
            },
        })
    }

    /// Records an entry; call before doing what it undoes.
    pub fn push(&mut self, entry: Entry) -> Result<()> {
        self.record.entries.push(entry);
        self.write()
    }

    /// Undoes an entry and forgets it once undone.
    pub fn undo(&mut self, entry: &Entry) -> Result<Outcome> {
        let outcome = undo(entry)?;
        if !matches!(outcome, Outcome::Pending(_)) {
            self.record.entries.retain(|e| e != entry);
            self.write()?;
        }
        Ok(outcome)
    }

    /// What the log holds now, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.record.entries
    }

    /// Puts `new` in the place of `old` (an entry that grew, such as the processes a group
    /// holds); `new` is added when `old` is not in the log.
    pub fn replace(&mut self, old: &Entry, new: Entry) -> Result<()> {
        match self.record.entries.iter_mut().find(|e| *e == old) {
            Some(e) => *e = new,
            None => self.record.entries.push(new),
        }
        self.write()
    }

    /// Forgets an entry whose action turned out not to be done (or not to be ours).
    pub fn forget(&mut self, entry: &Entry) -> Result<()> {
        self.record.entries.retain(|e| e != entry);
        self.write()
    }

    /// Undoes the entries `which` selects, newest first; returns those that must wait, with
    /// the reason.
    pub fn undo_where(&mut self, which: impl Fn(&Entry) -> bool) -> Result<Vec<(Entry, String)>> {
        let mut pending = Vec::new();
        let selected: Vec<Entry> = self
            .record
            .entries
            .iter()
            .filter(|e| which(e))
            .cloned()
            .collect();
        for entry in selected.into_iter().rev() {
            if let Outcome::Pending(why) = self.undo(&entry)? {
                pending.push((entry, why));
            }
        }
        Ok(pending)
    }

    fn write(&self) -> Result<()> {
        if self.record.entries.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("remove {}", self.path.display()))
                }
                _ => Ok(()),
            };
        }
        private_dir(&runtime_dir())?;
        let tmp = self.path.with_extension("tmp");
        write_private(&tmp, &serde_json::to_vec_pretty(&self.record)?)?;
        fs::rename(&tmp, &self.path).with_context(|| format!("write {}", self.path.display()))
    }
}

/// Creates the runtime directory readable and writable by its owner only, or checks that the
/// one there is this user's and that nobody else may write in it: an undo log that someone
/// else could have written must not steer `recover`.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let meta = fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if let Some(why) = untrusted(&meta) {
        anyhow::bail!(
            "the runtime directory {} {why}: undo logs are kept only where nobody else can \
             write; remove it, or name another with CHAOS_USER_RUNTIME_DIR",
            dir.display()
        );
    }
    Ok(())
}

/// Why a file or directory of the runtime directory is not to be trusted, if it is not.
fn untrusted(meta: &fs::Metadata) -> Option<String> {
    // SAFETY: geteuid(2) has no failure mode.
    let euid = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        Some("is a symbolic link".into())
    } else if meta.uid() != euid {
        Some(format!("belongs to uid {}, not to {euid}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "may be written by others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    }
}

/// Writes a file that only its owner may read or write, and syncs it.
fn write_private(path: &Path, text: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let _gone = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// The undo log of a session that is no longer running.
#[derive(Debug)]
pub struct Leftover {
    pub file: PathBuf,
    pub pid: u32,
    pub entries: Vec<Entry>,
}

/// What the runtime directory holds from sessions that are no longer running.
#[derive(Debug, Default)]
pub struct Found {
    pub leftovers: Vec<Leftover>,
    /// Files named like undo logs that cannot be read as one, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// The logs of dead sessions in the runtime directory. A file that cannot be read as an undo
/// log is reported, not fatal: it must not keep the others from being undone.
pub fn leftovers() -> Result<Found> {
    let dir = runtime_dir();
    let read = match fs::read_dir(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::default()),
        other => other.with_context(|| format!("read {}", dir.display()))?,
    };
    // A directory others may write in could hold logs they wrote, and this user's own file
    // could be swapped there: none of it is trusted.
    let meta = fs::symlink_metadata(&dir).with_context(|| format!("stat {}", dir.display()))?;
    if let Some(why) = untrusted(&meta) {
        anyhow::bail!(
            "the runtime directory {} {why}: its undo logs are not trusted; look at them by \
             hand, or name another directory with CHAOS_USER_RUNTIME_DIR",
            dir.display()
        );
    }
    let mut found = Found::default();
    for item in read {
        let file = item?.path();
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if !(name.starts_with("session-") && name.ends_with(".json")) {
            continue;
        }
        let trusted = match fs::symlink_metadata(&file) {
            Ok(meta) => {
                untrusted(&meta).map_or(Ok(()), |why| Err(format!("not trusted: it {why}")))
            }
            Err(e) => Err(e.to_string()),
        };
        let record = trusted
            .and_then(|()| fs::read(&file).map_err(|e| format!("unreadable: {e}")))
            .and_then(|text| {
                serde_json::from_slice::<Record>(&text).map_err(|e| format!("not an undo log: {e}"))
            });
        let record = match record {
            Ok(record) if record.schema_version != SCHEMA_VERSION => {
                found.unreadable.push((
                    file,
                    format!(
                        "written in format {} by another version of chaos-user (this one reads \
                         {SCHEMA_VERSION})",
                        record.schema_version
                    ),
                ));
                continue;
            }
            Ok(record) => record,
            Err(why) => {
                found.unreadable.push((file, why));
                continue;
            }
        };
        if process_start_time(record.pid).ok() == Some(record.start_time) {
            continue;
        }
        found.leftovers.push(Leftover {
            file,
            pid: record.pid,
            entries: record.entries,
        });
    }
    found.leftovers.sort_by_key(|l| l.pid);
    Ok(found)
}

/// Rewrites a dead session's log with what is still left, or removes it when nothing is.
pub fn rewrite_leftover(leftover: &Leftover, remaining: Vec<Entry>) -> Result<()> {
    if remaining.is_empty() {
        return fs::remove_file(&leftover.file)
            .with_context(|| format!("remove {}", leftover.file.display()));
    }
    let record = Record {
        schema_version: SCHEMA_VERSION,
        pid: leftover.pid,
        start_time: 0,
        entries: remaining,
    };
    let tmp = leftover.file.with_extension("tmp");
    write_private(&tmp, &serde_json::to_vec_pretty(&record)?)?;
    fs::rename(&tmp, &leftover.file).with_context(|| format!("write {}", leftover.file.display()))
}

/// Field 22 of /proc/PID/stat.
fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    after
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_naming_what_chaos_user_never_makes_is_not_trusted() {
        let dir = std::env::temp_dir().join(format!("chaos-undo-test-{}", std::process::id()));
        let group = dir.join("chaos-user-limit-1");
        fs::create_dir_all(&group).unwrap();
        let limit = dir.join("memory.max");
        fs::write(&limit, "keep").unwrap();
        let entries = [
            Entry::Limit {
                file: limit.clone(),
                previous: "changed".into(),
            },
            Entry::Moved {
                group: group.clone(),
                origins: vec![(1, dir.clone())],
            },
            Entry::Cgroup {
                path: dir.join("chaos-user-run-1"),
                kill: true,
            },
            Entry::RunDir {
                path: dir.join("chaos-experiment-1"),
            },
            Entry::Fill {
                file: dir.join("memory.max"),
            },
        ];
        // Names of the right shape at the wrong place: a v1 limit file outside the groups
        // chaos-user makes, and a group of its name that is not in a v1 hierarchy.
        let mount = crate::cgroup::mount_point().unwrap_or_else(|_| "/sys/fs/cgroup".into());
        let v1 = crate::cgroup::v1::hierarchy("cpu").unwrap_or_else(|| "/sys/fs/cgroup/cpu".into());
        let entries = entries.into_iter().chain([
            Entry::Limit {
                file: v1.join("some-service/cpu.cfs_quota_us"),
                previous: "1000".into(),
            },
            Entry::Moved {
                group: mount.join("some-service/chaos-user-limit-1"),
                origins: Vec::new(),
            },
        ]);
        for entry in &entries.collect::<Vec<_>>() {
            let outcome = undo(entry).unwrap();
            assert!(
                matches!(&outcome, Outcome::Kept(why) if why.contains("damaged")),
                "{entry}: {outcome:?}"
            );
        }
        assert_eq!(fs::read_to_string(&limit).unwrap(), "keep");
        assert!(group.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_start_time_is_readable() {
        let t = process_start_time(std::process::id()).unwrap();
        assert!(t > 0);
    }
}
