//! cgroup2: finding the mount, naming a target, the guardrails, and transient cgroups.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::error::{Class, Classify};

pub mod v1;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How `chaos-user run` names the cgroup it creates below its own, before its PID.
pub const RUN_CGROUP_PREFIX: &str = "chaos-user-run-";

/// Why a cgroup could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system is mounted (none in /proc/self/mountinfo)")]
    NoMount,
    /// The path names nothing.
    #[error("cgroup `{0}` does not exist")]
    NotFound(String),
    /// The path exists but is not a directory of the cgroup2 file system.
    #[error("`{0}` is not a cgroup2 directory")]
    NotCgroup2(String),
    /// A cgroup the guardrails protect.
    #[error("refusing to target {what} `{path}`")]
    Guarded { path: String, what: &'static str },
    /// A file operation on a cgroup failed.
    #[error("{op} `{path}`")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Classify for CgroupError {
    fn class(&self) -> Class {
        match self {
            CgroupError::NotFound(_) | CgroupError::NotCgroup2(_) | CgroupError::Guarded { .. } => {
                Class::BadInput
            }
            CgroupError::NoMount | CgroupError::Io { .. } => Class::Environment,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            CgroupError::NoMount => Some("mount one: mount -t cgroup2 none /sys/fs/cgroup".into()),
            CgroupError::NotFound(_) | CgroupError::NotCgroup2(_) => Some(
                "give a cgroup2 directory: absolute, or relative to the cgroup2 mount as the \
                 0:: line of /proc/PID/cgroup shows it"
                    .into(),
            ),
            CgroupError::Guarded { .. } => Some(
                "this would fault far more than one workload; add --force if that is meant".into(),
            ),
            CgroupError::Io { .. } => None,
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Where the cgroup2 file system is mounted (`/sys/fs/cgroup` on most machines,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    mount_point_in(&text).ok_or(CgroupError::NoMount)
}

fn mount_point_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape_octal(p)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup2 directory, named the three ways the kernel and users name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cgroup {
    /// The directory, as an absolute file system path.
    pub path: PathBuf,
    /// The path below the cgroup2 mount, as /proc/PID/cgroup shows it (`/` for the root).
    pub name: String,
    /// The cgroup id: the inode number of the directory.
    pub id: u64,
    /// Depth below the root cgroup (the root is 0).
    pub level: u32,
}

impl Cgroup {
    /// Resolves a user's cgroup path: an absolute directory on cgroup2, or a path relative to
    /// the cgroup2 mount (with or without a leading `/`, as /proc/PID/cgroup prints it).
    pub fn resolve(mount: &Path, given: &str) -> Result<Cgroup, CgroupError> {
        let given_path = Path::new(given);
        let path = if given_path.is_absolute() && given_path.exists() && is_cgroup2(given_path) {
            given_path.to_path_buf()
        } else {
            mount.join(given.trim_start_matches('/'))
        };
        if !path.exists() {
            return Err(if given_path.is_absolute() && given_path.exists() {
                CgroupError::NotCgroup2(given.to_string())
            } else {
                CgroupError::NotFound(given.to_string())
            });
        }
        let path = path.canonicalize().map_err(io_err("resolve", &path))?;
        let rel = path
            .strip_prefix(mount)
            .map_err(|_| CgroupError::NotCgroup2(given.into()))?;
        if !path.is_dir() || !is_cgroup2(&path) {
            return Err(CgroupError::NotCgroup2(given.to_string()));
        }
        Self::from_parts(mount, rel)
    }

    fn from_parts(mount: &Path, rel: &Path) -> Result<Cgroup, CgroupError> {
        // `mount.join("")` would end in a slash; the root cgroup is the mount itself.
        let path = if rel.as_os_str().is_empty() {
            mount.to_path_buf()
        } else {
            mount.join(rel)
        };
        let meta = fs::metadata(&path).map_err(io_err("stat", &path))?;
        let level = rel.components().count() as u32;
        let name = format!("/{}", rel.to_string_lossy());
        Ok(Cgroup {
            path,
            name,
            id: meta.ino(),
            level,
        })
    }

    /// The cgroup a process belongs to (its cgroup2 line in /proc/PID/cgroup).
    pub fn of_process(mount: &Path, pid: &str) -> Result<Cgroup, CgroupError> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| CgroupError::NotCgroup2(file.display().to_string()))?;
        Self::from_parts(mount, Path::new(name.trim_start_matches('/')))
    }

    /// Whether `self` is `other` or one of its ancestors.
    pub fn contains(&self, other: &Cgroup) -> bool {
        other.path.starts_with(&self.path)
    }

    /// Whether any process is in this cgroup or below it (`populated` in `cgroup.events`).
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let file = self.path.join("cgroup.events");
        let text = fs::read_to_string(&file).map_err(io_err("read", &file))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Whether this very cgroup still exists: not removed, and not replaced by another of the
    /// same name (as a service restart does).
    /// The cgroups above this one (up to the root) and below it: id, relation, name.
    pub fn related(&self) -> Vec<(u64, &'static str, String)> {
        use std::os::unix::fs::MetadataExt as _;
        let mut out = Vec::new();
        let (mut path, mut name) = (self.path.clone(), self.name.clone());
        for _ in 0..self.level {
            if !path.pop() {
                break;
            }
            name = match name.rsplit_once('/') {
                Some(("", _)) | None => "/".to_string(),
                Some((parent, _)) => parent.to_string(),
            };
            if let Ok(meta) = std::fs::metadata(&path) {
                out.push((meta.ino(), ", an ancestor of the target", name.clone()));
            }
        }
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                let below = entry.path();
                let relative = below.strip_prefix(&self.path).unwrap_or(&below);
                let name = format!("{}/{}", self.name.trim_end_matches('/'), relative.display());
                out.push((meta.ino(), ", below the target", name));
                dirs.push(below);
            }
        }
        out
    }

    /// The ids of this cgroup and every cgroup below it (at most `sockdiag::MAX_CGROUPS`).
    pub fn with_descendants(&self) -> Vec<u64> {
        let mut ids = vec![self.id];
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if ids.len() >= crate::sockdiag::MAX_CGROUPS {
                    return ids;
                }
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    ids.push(std::os::unix::fs::MetadataExt::ino(&meta));
                    stack.push(entry.path());
                }
            }
        }
        ids
    }

    pub fn exists(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.id)
            && self.path.join("cgroup.procs").exists()
    }
}

/// Whether `path` lies on a cgroup2 file system.
pub fn is_cgroup2(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path and `buf` a zeroed statfs the call fills in.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// Refuses targets that would fault much more than one workload, unless `force`:
/// the root cgroup, the injector's own cgroup and its ancestors, and PID 1's cgroup.
pub fn check_guardrails(mount: &Path, target: &Cgroup, force: bool) -> Result<(), CgroupError> {
    if force {
        return Ok(());
    }
    let guarded = |what| {
        Err(CgroupError::Guarded {
            path: target.name.clone(),
            what,
        })
    };
    if target.level == 0 {
        return guarded("the root cgroup");
    }
    let own = Cgroup::of_process(mount, "self")?;
    if target.contains(&own) {
        return if target.id == own.id {
            guarded("chaos-user's own cgroup")
        } else {
            guarded("an ancestor of chaos-user's own cgroup")
        };
    }
    if let Ok(init) = Cgroup::of_process(mount, "1") {
        if init.id == target.id {
            return guarded("PID 1's cgroup");
        }
    }
    Ok(())
}

/// Makes the transient cgroup of `run` (and of an experiment's target command or services,
/// told apart by `suffix`) below chaos-user's own, so that what runs in it stays under the
/// limits its caller runs under; in the undo log before it exists, with whether undoing it
/// kills what is left in it (`kill`: an experiment's, whose processes are its own) or waits
/// for them (`run`'s command outlives a killed injector). Returns it and its entry.
pub fn make_run_cgroup(
    mount: &Path,
    undo: &mut crate::undo::UndoLog,
    suffix: &str,
    kill: bool,
) -> anyhow::Result<(Cgroup, crate::undo::Entry)> {
    let own = Cgroup::of_process(mount, "self")?;
    let path = own
        .path
        .join(format!("{RUN_CGROUP_PREFIX}{}{suffix}", std::process::id()));
    let entry = crate::undo::Entry::Cgroup {
        path: path.clone(),
        kill,
    };
    undo.push(entry.clone())?;
    create(&path)?;
    let made = Cgroup::resolve(mount, &path.to_string_lossy());
    match made {
        Ok(cgroup) => Ok((cgroup, entry)),
        Err(e) => {
            undo.undo(&entry)?;
            Err(e.into())
        }
    }
}

/// Creates a cgroup directory (the caller has logged it in the undo log first).
pub fn create(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(io_err("create cgroup", path))
}

/// Whether `path` lies strictly below `mount`, with no `..` in it.
pub fn is_below(path: &Path, mount: &Path) -> bool {
    path.starts_with(mount)
        && path != mount
        && !path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// Whether `path` lies below the cgroup2 mount: what the undo log may name of cgroup2.
pub fn is_below_cgroup2(path: &Path) -> bool {
    mount_point().is_ok_and(|m| is_below(path, &m))
}

/// Removes an empty cgroup directory; a cgroup that no longer exists counts as removed.
pub fn remove(path: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err("remove cgroup", path)),
    }
}

/// The `cgroup.procs` files of the groups a new process joins between fork and exec: its
/// cgroup2 directory and, on hybrid layouts, v1 groups. Opened before the fork.
pub struct JoinOnStart {
    files: Vec<fs::File>,
}

impl JoinOnStart {
    pub fn new(cgroup: &Path, v1: &[&Path]) -> Result<JoinOnStart, CgroupError> {
        let files = std::iter::once(cgroup)
            .chain(v1.iter().copied())
            .map(|dir| {
                let file = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&file)
                    .map_err(io_err("open", &file))
            })
            .collect::<Result<_, _>>()?;
        Ok(JoinOnStart { files })
    }

    /// What the child runs before exec: it writes itself (`0`) into each group. Only write(2),
    /// which is async-signal-safe; keep `self` alive until the spawn has returned.
    pub fn hook(&self) -> impl Fn() -> io::Result<()> + Send + Sync + 'static {
        use std::os::fd::AsRawFd as _;
        let fds: Vec<i32> = self.files.iter().map(|f| f.as_raw_fd()).collect();
        move || {
            for &fd in &fds {
                // SAFETY: a one-byte buffer that lives for the call; a closed descriptor only
                // makes the call fail.
                if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        }
    }
}

/// Kills every process in a cgroup and below it (`cgroup.kill`, or SIGKILL one by one before
/// Linux 5.14); returns how many there were. Only for cgroups chaos-user made for processes it
/// started.
pub fn kill_all(cgroup: &Path) -> usize {
    let pids = processes_below(cgroup);
    if !pids.is_empty() && fs::write(cgroup.join("cgroup.kill"), "1").is_err() {
        for &pid in &pids {
            // SAFETY: kill(2) on a process in a cgroup that chaos-user made for the processes
            // it started; nothing else is put there.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    pids.len()
}

/// Kills what is in a cgroup chaos-user made ([`kill_all`]) until it is empty, for at most
/// `within`; whether it is empty.
pub fn empty(cgroup: &Path, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if kill_all(cgroup) == 0 {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The CPU time of a cgroup's processes so far, in microseconds (`usage_usec` of `cpu.stat`,
/// which every cgroup2 directory has, with or without the cpu controller); 0 when unreadable.
pub fn cpu_usage_usec(cgroup: &Path) -> u64 {
    fs::read_to_string(cgroup.join("cpu.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The processes of a cgroup and of every cgroup below it.
pub fn processes_below(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(
            procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let text = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            mount_point_in(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_point_in("1 2 0:1 / /x rw - tmpfs tmpfs rw\n"), None);
        let escaped = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            mount_point_in(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
    }
}
