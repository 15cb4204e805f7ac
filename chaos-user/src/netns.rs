//! Network namespaces of a target: tc programs see the traffic of one namespace, and a socket
//! redirected to a local responder reaches it only in its own namespace, so a target whose
//! processes live in another namespace (a container's) needs both there too. Work for another
//! namespace runs on a short-lived thread that joins it; the rest of the process stays put.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

/// A network namespace, held open while this value lives.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's inode number, its identity.
    pub inode: u64,
    file: File,
}

/// The inode of the network namespace this thread is in.
pub fn own_inode() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

impl Netns {
    /// The network namespace of PID 1: one place that every session on the machine shares,
    /// whatever namespace it runs in.
    pub fn of_init() -> io::Result<Netns> {
        Netns::open(Path::new("/proc/1/ns/net"))
    }

    fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Netns { inode, file })
    }

    /// The network namespaces that processes of `cgroup_dir` (and of the cgroups below it) are
    /// in, other than this process's own.
    pub fn of_cgroup(cgroup_dir: &Path) -> Vec<Netns> {
        let own = own_inode().ok();
        let mut seen = BTreeSet::new();
        let mut found = Vec::new();
        for pid in crate::cgroup::processes_below(cgroup_dir) {
            let Ok(ns) = Netns::open(Path::new(&format!("/proc/{pid}/ns/net"))) else {
                continue;
            };
            if Some(ns.inode) != own && seen.insert(ns.inode) {
                found.push(ns);
            }
        }
        found
    }

    /// Finds a namespace by inode: through any process in it, or a name `ip netns` gave it.
    /// None when no process and no name holds it any more (it is gone, with what was in it).
    pub fn find(inode: u64) -> Option<Netns> {
        let named = fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        let processes = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .map(|e| e.path().join("ns/net"));
        named.chain(processes).find_map(|path| {
            let meta = fs::metadata(&path).ok()?;
            if meta.ino() != inode {
                return None;
            }
            Netns::open(&path).ok().filter(|ns| ns.inode == inode)
        })
    }

    /// Runs `work` on a thread that has joined this namespace, and waits for it.
    pub fn run<R: Send>(&self, work: impl FnOnce() -> R + Send) -> io::Result<R> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: setns(2) on a descriptor this value keeps open; it moves only
                    // this thread, which ends when the work is done.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(work())
                })
                .join()
                .map_err(|_| io::Error::other("the work in another network namespace panicked"))?
        })
    }
}
