//! `file`, `nospace`, `fd-limit` (files) and `fail`: calls of the target fail with an errno at
//! the LSM hook their work passes through, before the kernel does it. `crash` with `path=`
//! sends its signal from the same hooks.
//!
//! Every hook exists twice: as an `lsm` program, which runs where the BPF LSM is in the active
//! LSM list, and as a modify-return program on the kernel's `security_*` function, which runs
//! wherever BPF trampolines do. The second kind sits in `fentry/` sections because the loader
//! of the programs knows no modify-return section; chaos-user loads it itself with the right
//! attach type. The two share the argument layout that matters here (the hook's first
//! arguments), and both fail the call when they return a negative errno.
//!
//! `path=` prefixes are matched on the object the call acts on: the walk goes from its dentry
//! up through the parents, crossing mount points, and looks each directory up by device and
//! inode number, so neither a symlink nor a relative path nor a bind mount dodges it.
//!
//! Minimum kernel: 5.7 (BPF LSM and modify-return); 5.12 for the atomic fetch-add of `nth`
//! and `every`.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel, bpf_send_signal,
};
use chaos_common::{CALL_COUNT_BASE, KernelOffsets, MAX_CALL_RULES, MAX_PATH_DEPTH, PathKey, op};

use crate::{
    count,
    maps::{CALL_COUNTERS, CALL_RULES, OFFSETS, PATHS, TARGET},
    now, scheduled,
};

/// `MAY_WRITE` and `MAY_READ` of the file permission hook's mask.
const MAY_WRITE: u64 = 2;
const MAY_READ: u64 = 4;
/// `f_mode` of a file that this open created (kernel 4.19).
const FMODE_CREATED: u32 = 0x10_0000;
/// The file type bits of a mode, and a regular file's.
const S_IFMT: u64 = 0o170_000;
const S_IFREG: u64 = 0o100_000;

/// Argument `n` of the hook, read as a plain number: the walk adds offsets to it, which the
/// verifier allows on numbers, not on the typed pointers it hands out.
#[inline(always)]
fn arg(ctx: *mut c_void, n: usize) -> u64 {
    // SAFETY: the context of a trampoline program is the array of the hook's arguments; the
    // helper reads it safely whatever it holds.
    unsafe { bpf_probe_read_kernel((ctx as *const u64).wrapping_add(n)) }.unwrap_or(0)
}

/// A pointer-sized field at `base + offset` of a kernel struct; 0 when unreadable.
#[inline(always)]
fn field(base: u64, offset: u32) -> u64 {
    if base == 0 {
        return 0;
    }
    // SAFETY: the helper reads kernel memory safely whatever the address.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64) }.unwrap_or(0)
}

/// Where a walk starts: a dentry and the `vfsmount` it was reached through (0 if unknown).
#[derive(Clone, Copy)]
pub struct Start {
    pub dentry: u64,
    pub mnt: u64,
}

const NO_PATH: Start = Start { dentry: 0, mnt: 0 };

/// The object of a `struct file *`.
#[inline(always)]
pub fn of_file(file: u64, off: &KernelOffsets) -> Start {
    of_path(
        if file == 0 {
            0
        } else {
            file + off.file_path as u64
        },
        off,
    )
}

/// The object of a `const struct path *`.
#[inline(always)]
fn of_path(path: u64, off: &KernelOffsets) -> Start {
    Start {
        dentry: field(path, off.path_dentry),
        mnt: field(path, off.path_mnt),
    }
}

/// A new or removed entry `dentry` of the directory `dir` (a `const struct path *`).
#[inline(always)]
fn of_entry(dir: u64, dentry: u64, off: &KernelOffsets) -> Start {
    Start {
        dentry,
        mnt: field(dir, off.path_mnt),
    }
}

/// Where the walk is: a dentry, the `vfsmount` it was reached through, and the bits found.
struct Walk {
    dentry: u64,
    mnt: u64,
    found: u32,
}

/// The bits of every `path=` prefix that holds `start` (the object itself counts), looking at
/// most `MAX_PATH_DEPTH` directories up.
///
/// The steps are written out rather than looped: kernels before 6.4 refuse a loop whose back
/// edge is a fall-through, which is how the compiler lays this one out.
#[inline(never)]
pub fn prefixes(dentry: u64, mnt: u64) -> u32 {
    let Some(off) = OFFSETS.get(0) else {
        return 0;
    };
    if off.valid == 0 {
        return 0;
    }
    let mut walk = Walk {
        dentry,
        mnt,
        found: 0,
    };
    macro_rules! four {
        ($($step:tt)*) => {
            $($step)* $($step)* $($step)* $($step)*
        };
    }
    macro_rules! three {
        ($($step:tt)*) => {
            $($step)* $($step)* $($step)*
        };
    }
    three! { four! { four! {
        if !step(&mut walk, off) {
            return walk.found;
        }
    } } }
    walk.found
}

const _: () = assert!(MAX_PATH_DEPTH == 3 * 4 * 4);

/// One directory of the walk: looks it up, then moves to its parent, or from the root of a
/// filesystem to where it is mounted. False once there is nowhere to go.
#[inline(always)]
fn step(walk: &mut Walk, off: &KernelOffsets) -> bool {
    if walk.dentry == 0 {
        return false;
    }
    let inode = field(walk.dentry, off.dentry_inode);
    if inode != 0 {
        let sb = field(inode, off.inode_sb);
        let dev: u32 = if sb == 0 {
            0
        } else {
            // SAFETY: the helper reads kernel memory safely whatever the address.
            unsafe { bpf_probe_read_kernel((sb + off.sb_dev as u64) as *const u32) }.unwrap_or(0)
        };
        let key = PathKey {
            ino: field(inode, off.inode_ino),
            dev,
            _pad: 0,
        };
        // SAFETY: the value is a plain integer copied out at once.
        if let Some(bits) = unsafe { PATHS.get(&key) } {
            walk.found |= *bits;
        }
    }
    let parent = field(walk.dentry, off.dentry_parent);
    if parent != walk.dentry {
        walk.dentry = parent;
        return true;
    }
    // The root of a filesystem: go on from where it is mounted.
    if walk.mnt == 0 {
        return false;
    }
    let mount = walk.mnt - off.mount_mnt as u64;
    let above = field(mount, off.mount_parent);
    if above == 0 || above == mount {
        return false;
    }
    walk.dentry = field(mount, off.mount_mountpoint);
    walk.mnt = above + off.mount_mnt as u64;
    true
}

/// What `gate` found: the call is not the target's, or no rule is live.
const NOT_OURS: u32 = 0;
/// The call is the target's and a rule sees its operation, none with a path.
const OURS: u32 = 1;
/// The same, and some rule for the operation has a path: the walk is needed.
const OURS_WITH_PATH: u32 = 2;

/// Whether any call rule may act on this call doing `op`. Every hook asks first, so that the
/// calls of every other process on the machine cost no reads of kernel structs.
#[inline(never)]
fn gate(op: u64) -> u32 {
    let Some(target) = TARGET.get(0) else {
        return NOT_OURS;
    };
    if target.call_rules == 0 {
        return NOT_OURS;
    }
    // SAFETY: a plain helper call; the level is the target's depth.
    let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(target.level as i32) };
    if cgroup != target.cgroup_id {
        return NOT_OURS;
    }
    let mut found = NOT_OURS;
    for i in 0..MAX_CALL_RULES {
        if i >= target.call_rules {
            break;
        }
        if let Some(rule) = CALL_RULES.get(i) {
            if rule.ops & op != 0 {
                found = found.max(if rule.path_bit != 0 {
                    OURS_WITH_PATH
                } else {
                    OURS
                });
            }
        }
    }
    found
}

/// The verdict of the call rules on one call doing `op` (past `gate`), whose objects are
/// under the prefixes `under`: 0 to let it go on, or the negative errno it fails with.
#[inline(never)]
fn verdict(op: u64, under: u32) -> i32 {
    let Some(target) = TARGET.get(0) else {
        return 0;
    };
    let now = now();
    for i in 0..MAX_CALL_RULES {
        if i >= target.call_rules {
            break;
        }
        let Some(rule) = CALL_RULES.get(i) else {
            break;
        };
        if rule.ops & op == 0 || (rule.path_bit != 0 && under & rule.path_bit == 0) {
            continue;
        }
        let live = now < rule.deadline_ns;
        let act = live && scheduled(rule.mode, rule.threshold, rule.count, CALL_COUNT_BASE + i);
        count(CALL_COUNTERS.get_ptr_mut(i), live, act);
        if act && rule.signal != 0 {
            // SAFETY: a plain helper call: the signal goes to the calling process, and the
            // call goes on.
            unsafe { bpf_send_signal(rule.signal) };
            return 0;
        }
        let errno = rule.errno;
        if !act || errno == 0 || errno > 4095 {
            return 0;
        }
        return -(errno as i32);
    }
    0
}

/// The prefix bits of a call's objects: `objects` reads them from the hook's arguments, and
/// runs only when a rule has a path. The second object (the new name of a rename, the old name
/// of a link) matches as well as the first.
#[inline(always)]
fn under(gate: u32, objects: impl FnOnce(&KernelOffsets) -> (Start, Start)) -> u32 {
    if gate != OURS_WITH_PATH {
        return 0;
    }
    let (first, second) = objects(&offsets());
    let mut under = 0;
    if first.dentry != 0 {
        under |= prefixes(first.dentry, first.mnt);
    }
    if second.dentry != 0 {
        under |= prefixes(second.dentry, second.mnt);
    }
    under
}

/// The verdict on a call doing `op` on the objects `objects` reads.
#[inline(always)]
fn decide(op: u64, objects: impl FnOnce(&KernelOffsets) -> (Start, Start)) -> i32 {
    let gate = gate(op);
    if gate == NOT_OURS {
        return 0;
    }
    verdict(op, under(gate, objects))
}

/// The file behind descriptor `fd` of the calling process; 0 if none.
#[inline(always)]
pub fn file_of_fd(fd: u64, off: &KernelOffsets) -> u64 {
    // SAFETY: a plain helper call without arguments.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let fdt = field(field(task, off.task_files), off.files_fdt);
    if fdt == 0 {
        return 0;
    }
    // SAFETY: the helper reads kernel memory safely whatever the address.
    let max: u32 =
        unsafe { bpf_probe_read_kernel((fdt + off.fdt_max_fds as u64) as *const u32) }.unwrap_or(0);
    if fd >= u64::from(max) {
        return 0;
    }
    field(field(fdt, off.fdt_fd), (fd * 8) as u32)
}

/// The offsets record, or a zeroed one (then no walk runs and path rules never match).
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    OFFSETS.get(0).copied().unwrap_or_default()
}

/// Defines one hook twice: `lsm/$hook` and the modify-return twin on `$function`, both running
/// `$body` with the context.
macro_rules! hook {
    ($lsm:ident, $fmod:ident, $hook:literal, $function:literal, $body:ident) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = concat!("lsm/", $hook))]
        pub fn $lsm(ctx: *mut c_void) -> i32 {
            $body(ctx)
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = concat!("fentry/", $function))]
        pub fn $fmod(ctx: *mut c_void) -> i32 {
            $body(ctx)
        }
    };
}

/// An open that created its file was decided at `path_mknod`, before the file existed.
#[inline(always)]
fn file_open(ctx: *mut c_void) -> i32 {
    let gate = gate(op::OPEN);
    if gate == NOT_OURS {
        return 0;
    }
    let off = offsets();
    let file = arg(ctx, 0);
    if file != 0 && off.valid != 0 {
        // SAFETY: the helper reads kernel memory safely whatever the address.
        let mode: u32 =
            unsafe { bpf_probe_read_kernel((file + off.file_mode as u64) as *const u32) }
                .unwrap_or(0);
        if mode & FMODE_CREATED != 0 {
            return 0;
        }
    }
    verdict(op::OPEN, under(gate, |off| (of_file(file, off), NO_PATH)))
}

#[inline(always)]
fn file_permission(ctx: *mut c_void) -> i32 {
    let mask = arg(ctx, 1);
    let op = if mask & MAY_WRITE != 0 {
        op::WRITE
    } else if mask & MAY_READ != 0 {
        op::READ
    } else {
        return 0;
    };
    file(ctx, op)
}

/// Hooks whose arguments are `(const struct path *dir, struct dentry *dentry, ...)`.
#[inline(always)]
fn entry(ctx: *mut c_void, op: u64) -> i32 {
    decide(op, |off| (of_entry(arg(ctx, 0), arg(ctx, 1), off), NO_PATH))
}

/// Hooks whose first argument is `const struct path *`.
#[inline(always)]
fn path(ctx: *mut c_void, op: u64) -> i32 {
    decide(op, |off| (of_path(arg(ctx, 0), off), NO_PATH))
}

/// Hooks whose first argument is `struct file *`.
#[inline(always)]
fn file(ctx: *mut c_void, op: u64) -> i32 {
    decide(op, |off| (of_file(arg(ctx, 0), off), NO_PATH))
}

/// A new regular file is also an open (open with `O_CREAT` makes it here): `op=open` fails
/// it before the file exists.
#[inline(always)]
fn path_mknod(ctx: *mut c_void) -> i32 {
    let kind = arg(ctx, 2) & S_IFMT;
    let op = if kind == S_IFREG || kind == 0 {
        op::CREATE | op::OPEN
    } else {
        op::CREATE
    };
    entry(ctx, op)
}

#[inline(always)]
fn path_unlink(ctx: *mut c_void) -> i32 {
    entry(ctx, op::UNLINK)
}

#[inline(always)]
fn path_mkdir(ctx: *mut c_void) -> i32 {
    entry(ctx, op::MKDIR)
}

#[inline(always)]
fn path_rmdir(ctx: *mut c_void) -> i32 {
    entry(ctx, op::RMDIR)
}

#[inline(always)]
fn path_symlink(ctx: *mut c_void) -> i32 {
    entry(ctx, op::SYMLINK)
}

/// `(old_dir, old_dentry, new_dir, new_dentry, flags)`: either name under a path matches.
#[inline(always)]
fn path_rename(ctx: *mut c_void) -> i32 {
    decide(op::RENAME, |off| {
        (
            of_entry(arg(ctx, 0), arg(ctx, 1), off),
            of_entry(arg(ctx, 2), arg(ctx, 3), off),
        )
    })
}

/// `(old_dentry, new_dir, new_dentry)`: either name under a path matches (a hard link stays
/// on one mount).
#[inline(always)]
fn path_link(ctx: *mut c_void) -> i32 {
    decide(op::LINK, |off| {
        let new_dir = arg(ctx, 1);
        (
            of_entry(new_dir, arg(ctx, 2), off),
            of_entry(new_dir, arg(ctx, 0), off),
        )
    })
}

#[inline(always)]
fn path_chmod(ctx: *mut c_void) -> i32 {
    path(ctx, op::CHMOD)
}

#[inline(always)]
fn path_chown(ctx: *mut c_void) -> i32 {
    path(ctx, op::CHOWN)
}

#[inline(always)]
fn path_truncate(ctx: *mut c_void) -> i32 {
    path(ctx, op::TRUNCATE)
}

#[inline(always)]
fn file_ioctl(ctx: *mut c_void) -> i32 {
    file(ctx, op::IOCTL)
}

#[inline(always)]
fn file_lock(ctx: *mut c_void) -> i32 {
    file(ctx, op::LOCK)
}

/// Hooks with no path to match.
macro_rules! pathless {
    ($($name:ident => $op:expr),* $(,)?) => {
        $(
            #[inline(always)]
            fn $name(_ctx: *mut c_void) -> i32 {
                decide($op, |_| (NO_PATH, NO_PATH))
            }
        )*
    };
}

pathless! {
    file_alloc => op::FILE_ALLOC,
    task_alloc => op::TASK_ALLOC,
    mmap_file => op::MMAP,
    file_mprotect => op::MPROTECT,
    socket_bind => op::BIND,
    socket_listen => op::LISTEN,
    socket_accept => op::ACCEPT,
    socket_sendmsg => op::SENDMSG,
    socket_recvmsg => op::RECVMSG,
    task_kill => op::KILL,
    task_fix_setuid => op::SETUID,
    task_fix_setgid => op::SETGID,
}

hook!(
    chaos_lsm_open,
    chaos_fmod_open,
    "file_open",
    "security_file_open",
    file_open
);
hook!(
    chaos_lsm_perm,
    chaos_fmod_perm,
    "file_permission",
    "security_file_permission",
    file_permission
);
hook!(
    chaos_lsm_mknod,
    chaos_fmod_mknod,
    "path_mknod",
    "security_path_mknod",
    path_mknod
);
hook!(
    chaos_lsm_unlink,
    chaos_fmod_unlink,
    "path_unlink",
    "security_path_unlink",
    path_unlink
);
hook!(
    chaos_lsm_falloc,
    chaos_fmod_falloc,
    "file_alloc_security",
    "security_file_alloc",
    file_alloc
);
hook!(
    chaos_lsm_talloc,
    chaos_fmod_talloc,
    "task_alloc",
    "security_task_alloc",
    task_alloc
);
hook!(
    chaos_lsm_mmap,
    chaos_fmod_mmap,
    "mmap_file",
    "security_mmap_file",
    mmap_file
);
hook!(
    chaos_lsm_mprot,
    chaos_fmod_mprot,
    "file_mprotect",
    "security_file_mprotect",
    file_mprotect
);
hook!(
    chaos_lsm_ioctl,
    chaos_fmod_ioctl,
    "file_ioctl",
    "security_file_ioctl",
    file_ioctl
);
hook!(
    chaos_lsm_rename,
    chaos_fmod_rename,
    "path_rename",
    "security_path_rename",
    path_rename
);
hook!(
    chaos_lsm_mkdir,
    chaos_fmod_mkdir,
    "path_mkdir",
    "security_path_mkdir",
    path_mkdir
);
hook!(
    chaos_lsm_rmdir,
    chaos_fmod_rmdir,
    "path_rmdir",
    "security_path_rmdir",
    path_rmdir
);
hook!(
    chaos_lsm_link,
    chaos_fmod_link,
    "path_link",
    "security_path_link",
    path_link
);
hook!(
    chaos_lsm_symlink,
    chaos_fmod_symlink,
    "path_symlink",
    "security_path_symlink",
    path_symlink
);
hook!(
    chaos_lsm_chmod,
    chaos_fmod_chmod,
    "path_chmod",
    "security_path_chmod",
    path_chmod
);
hook!(
    chaos_lsm_chown,
    chaos_fmod_chown,
    "path_chown",
    "security_path_chown",
    path_chown
);
hook!(
    chaos_lsm_trunc,
    chaos_fmod_trunc,
    "path_truncate",
    "security_path_truncate",
    path_truncate
);
hook!(
    chaos_lsm_lock,
    chaos_fmod_lock,
    "file_lock",
    "security_file_lock",
    file_lock
);
hook!(
    chaos_lsm_bind,
    chaos_fmod_bind,
    "socket_bind",
    "security_socket_bind",
    socket_bind
);
hook!(
    chaos_lsm_listen,
    chaos_fmod_listen,
    "socket_listen",
    "security_socket_listen",
    socket_listen
);
hook!(
    chaos_lsm_accept,
    chaos_fmod_accept,
    "socket_accept",
    "security_socket_accept",
    socket_accept
);
hook!(
    chaos_lsm_send,
    chaos_fmod_send,
    "socket_sendmsg",
    "security_socket_sendmsg",
    socket_sendmsg
);
hook!(
    chaos_lsm_recv,
    chaos_fmod_recv,
    "socket_recvmsg",
    "security_socket_recvmsg",
    socket_recvmsg
);
hook!(
    chaos_lsm_kill,
    chaos_fmod_kill,
    "task_kill",
    "security_task_kill",
    task_kill
);
hook!(
    chaos_lsm_setuid,
    chaos_fmod_setuid,
    "task_fix_setuid",
    "security_task_fix_setuid",
    task_fix_setuid
);
hook!(
    chaos_lsm_setgid,
    chaos_fmod_setgid,
    "task_fix_setgid",
    "security_task_fix_setgid",
    task_fix_setgid
);
