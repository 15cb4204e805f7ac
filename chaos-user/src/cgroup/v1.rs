//! Hybrid layouts: controllers such as `cpu` and `memory` mounted as cgroup v1 hierarchies
//! beside the cgroup2 tree. A limit there applies to a v1 group, and which v1 group a process is
//! in has nothing to do with the cgroup2 directory the user names. So a session that limits
//! such a controller puts the target's processes into a v1 group of its own (made for `run`'s
//! command from the start; for `inject`, the target's processes are moved in and, at the end,
//! back where they were).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// How a session names the v1 groups it moves the target's processes into, before its PID.
pub const GROUP_PREFIX: &str = "chaos-user-limit-";

/// Where `controller`'s v1 hierarchy is mounted, if it is a v1 controller on this machine.
/// A controller belongs to one hierarchy at a time, so then it is not in cgroup2.
pub fn hierarchy(controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    hierarchies_in(&text)
        .into_iter()
        .find(|(_, controllers)| controllers.iter().any(|c| c == controller))
        .map(|(mount, _)| mount)
}

/// Every v1 hierarchy's mount point.
pub fn mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .map(|text| hierarchies_in(&text).into_iter().map(|(m, _)| m).collect())
        .unwrap_or_default()
}

/// The v1 hierarchies in a mountinfo text: mount point and controllers (from the super options).
fn hierarchies_in(mountinfo: &str) -> Vec<(PathBuf, Vec<String>)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            if right.next()? != "cgroup" {
                return None;
            }
            let options = right.nth(1)?;
            let mount = left.split_whitespace().nth(4)?;
            Some((
                PathBuf::from(super::unescape_octal(mount)),
                options
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                    .map(str::to_string)
                    .collect(),
            ))
        })
        .collect()
}

/// The group of process `pid` in the hierarchy of `controller` mounted at `mount`.
pub fn group_of(mount: &Path, controller: &str, pid: i32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let name = group_in(&text, controller)?;
    Some(match name.trim_start_matches('/') {
        "" => mount.to_path_buf(),
        name => mount.join(name),
    })
}

/// The group named for `controller` in a /proc/PID/cgroup text (`N:cpu,cpuacct:/a/b`).
fn group_in(text: &str, controller: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, name) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| name.to_string())
    })
}

/// Whether `path` is a group chaos-user makes: named so, below a v1 hierarchy's mount.
pub fn is_our_group(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(GROUP_PREFIX))
        && mounts().iter().any(|m| super::is_below(path, m))
}

/// Where process `pid` came from, by `origins`: its own entry, else that of the nearest
/// ancestor process with one (a child forked inside the session's group goes back with its
/// parent).
pub fn origin_of(pid: i32, origins: &[(i32, PathBuf)]) -> Option<PathBuf> {
    let mut p = pid;
    for _ in 0..32 {
        if let Some((_, origin)) = origins.iter().find(|(o, _)| *o == p) {
            return Some(origin.clone());
        }
        p = parent_pid(p)?;
        if p <= 1 {
            return None;
        }
    }
    None
}

/// The parent of process `pid` (`PPid` in /proc/PID/status).
pub fn parent_pid(pid: i32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The processes in a v1 group (not those of the groups below it).
pub fn procs(group: &Path) -> Vec<i32> {
    fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Moves process `pid` (all its threads) into `group`; one that exited meanwhile is no error.
pub fn move_to(group: &Path, pid: i32) -> io::Result<()> {
    match fs::write(group.join("cgroup.procs"), pid.to_string()) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The deepest group that holds all of `groups` (the hierarchy's root `mount` when none).
pub fn common_ancestor(mount: &Path, groups: &[PathBuf]) -> PathBuf {
    let Some(first) = groups.first() else {
        return mount.to_path_buf();
    };
    let mut common = first.clone();
    while !groups.iter().all(|g| g.starts_with(&common)) {
        if !common.pop() {
            break;
        }
    }
    if common.starts_with(mount) {
        common
    } else {
        mount.to_path_buf()
    }
}

/// The files a limit on `controller` is written to in a v1 group, with their values:
/// `cpu` as a quota in µs of a 100 ms period, `memory` in bytes.
pub fn limit_files(group: &Path, controller: &str, value: u64) -> Vec<(PathBuf, String)> {
    match controller {
        "cpu" => vec![
            (group.join("cpu.cfs_period_us"), "100000".to_string()),
            (group.join("cpu.cfs_quota_us"), value.to_string()),
        ],
        _ => vec![(group.join("memory.limit_in_bytes"), value.to_string())],
    }
}

/// The names of the v1 limit files chaos-user writes.
pub const LIMIT_FILES: [&str; 3] = [
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "memory.limit_in_bytes",
];

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_each_controller_in_its_hierarchy() {
        let found = hierarchies_in(MOUNTINFO);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].0, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(found[0].1, ["cpu", "cpuacct"]);
        assert_eq!(found[1].1, ["memory"]);
        assert_eq!(found[2].1, ["xattr"]);
    }

    #[test]
    fn reads_a_process_group_by_controller() {
        let text = "12:memory:/a/b\n4:cpu,cpuacct:/svc\n1:name=systemd:/x\n0::/user\n";
        assert_eq!(group_in(text, "cpu").as_deref(), Some("/svc"));
        assert_eq!(group_in(text, "cpuacct").as_deref(), Some("/svc"));
        assert_eq!(group_in(text, "memory").as_deref(), Some("/a/b"));
        assert_eq!(group_in(text, "pids"), None);
    }

    #[test]
    fn common_ancestor_stays_in_the_hierarchy() {
        let mount = Path::new("/m");
        let groups = [PathBuf::from("/m/a/b/c"), PathBuf::from("/m/a/b/d/e")];
        assert_eq!(common_ancestor(mount, &groups), PathBuf::from("/m/a/b"));
        assert_eq!(
            common_ancestor(mount, &[PathBuf::from("/m/x"), PathBuf::from("/m/y")]),
            PathBuf::from("/m")
        );
        assert_eq!(common_ancestor(mount, &[]), PathBuf::from("/m"));
    }
}
