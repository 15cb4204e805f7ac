//! The LSM hook programs of `file`, `nospace`, `fail` and `fd-limit`: which kind this kernel
//! runs, the struct offsets their path walk reads, and the modify-return programs, which
//! chaos-user loads and links itself because aya's loader has no such program type.

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};
use chaos_common::{KernelOffsets, PathKey, op};

use super::LoadError;

/// How the hooks run on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// `lsm` programs: the BPF LSM is in the active LSM list.
    Lsm,
    /// Modify-return programs on the `security_*` functions: BPF trampolines, without the BPF
    /// LSM.
    ModifyReturn,
}

impl HookKind {
    /// `lsm` where the active LSM list has `bpf`, modify-return elsewhere. Without securityfs
    /// the list cannot be read, and modify-return, which runs either way, is the choice.
    pub fn detect() -> HookKind {
        match std::fs::read_to_string("/sys/kernel/security/lsm") {
            Ok(list) if list.trim().split(',').any(|l| l == "bpf") => HookKind::Lsm,
            _ => HookKind::ModifyReturn,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HookKind::Lsm => "lsm",
            HookKind::ModifyReturn => "fmod_ret",
        }
    }
}

/// One hook: the operations it sees, its LSM name, the kernel function it is called from, and
/// the two programs of the object.
pub struct Hook {
    pub ops: u64,
    pub lsm: &'static str,
    pub function: &'static str,
    pub lsm_program: &'static str,
    pub fmod_program: &'static str,
}

const fn hook(
    ops: u64,
    lsm: &'static str,
    function: &'static str,
    lsm_program: &'static str,
    fmod_program: &'static str,
) -> Hook {
    Hook {
        ops,
        lsm,
        function,
        lsm_program,
        fmod_program,
    }
}

/// Every hook of the object.
pub const HOOKS: &[Hook] = &[
    hook(
        op::OPEN,
        "file_open",
        "security_file_open",
        "chaos_lsm_open",
        "chaos_fmod_open",
    ),
    hook(
        op::READ | op::WRITE,
        "file_permission",
        "security_file_permission",
        "chaos_lsm_perm",
        "chaos_fmod_perm",
    ),
    // An open that would create its file is failed here, before the file exists.
    hook(
        op::CREATE | op::OPEN,
        "path_mknod",
        "security_path_mknod",
        "chaos_lsm_mknod",
        "chaos_fmod_mknod",
    ),
    hook(
        op::UNLINK,
        "path_unlink",
        "security_path_unlink",
        "chaos_lsm_unlink",
        "chaos_fmod_unlink",
    ),
    hook(
        op::FILE_ALLOC,
        "file_alloc_security",
        "security_file_alloc",
        "chaos_lsm_falloc",
        "chaos_fmod_falloc",
    ),
    hook(
        op::TASK_ALLOC,
        "task_alloc",
        "security_task_alloc",
        "chaos_lsm_talloc",
        "chaos_fmod_talloc",
    ),
    hook(
        op::MMAP,
        "mmap_file",
        "security_mmap_file",
        "chaos_lsm_mmap",
        "chaos_fmod_mmap",
    ),
    hook(
        op::MPROTECT,
        "file_mprotect",
        "security_file_mprotect",
        "chaos_lsm_mprot",
        "chaos_fmod_mprot",
    ),
    hook(
        op::IOCTL,
        "file_ioctl",
        "security_file_ioctl",
        "chaos_lsm_ioctl",
        "chaos_fmod_ioctl",
    ),
    hook(
        op::RENAME,
        "path_rename",
        "security_path_rename",
        "chaos_lsm_rename",
        "chaos_fmod_rename",
    ),
    hook(
        op::MKDIR,
        "path_mkdir",
        "security_path_mkdir",
        "chaos_lsm_mkdir",
        "chaos_fmod_mkdir",
    ),
    hook(
        op::RMDIR,
        "path_rmdir",
        "security_path_rmdir",
        "chaos_lsm_rmdir",
        "chaos_fmod_rmdir",
    ),
    hook(
        op::LINK,
        "path_link",
        "security_path_link",
        "chaos_lsm_link",
        "chaos_fmod_link",
    ),
    hook(
        op::SYMLINK,
        "path_symlink",
        "security_path_symlink",
        "chaos_lsm_symlink",
        "chaos_fmod_symlink",
    ),
    hook(
        op::CHMOD,
        "path_chmod",
        "security_path_chmod",
        "chaos_lsm_chmod",
        "chaos_fmod_chmod",
    ),
    hook(
        op::CHOWN,
        "path_chown",
        "security_path_chown",
        "chaos_lsm_chown",
        "chaos_fmod_chown",
    ),
    hook(
        op::TRUNCATE,
        "path_truncate",
        "security_path_truncate",
        "chaos_lsm_trunc",
        "chaos_fmod_trunc",
    ),
    hook(
        op::LOCK,
        "file_lock",
        "security_file_lock",
        "chaos_lsm_lock",
        "chaos_fmod_lock",
    ),
    hook(
        op::BIND,
        "socket_bind",
        "security_socket_bind",
        "chaos_lsm_bind",
        "chaos_fmod_bind",
    ),
    hook(
        op::LISTEN,
        "socket_listen",
        "security_socket_listen",
        "chaos_lsm_listen",
        "chaos_fmod_listen",
    ),
    hook(
        op::ACCEPT,
        "socket_accept",
        "security_socket_accept",
        "chaos_lsm_accept",
        "chaos_fmod_accept",
    ),
    hook(
        op::SENDMSG,
        "socket_sendmsg",
        "security_socket_sendmsg",
        "chaos_lsm_send",
        "chaos_fmod_send",
    ),
    hook(
        op::RECVMSG,
        "socket_recvmsg",
        "security_socket_recvmsg",
        "chaos_lsm_recv",
        "chaos_fmod_recv",
    ),
    hook(
        op::KILL,
        "task_kill",
        "security_task_kill",
        "chaos_lsm_kill",
        "chaos_fmod_kill",
    ),
    hook(
        op::SETUID,
        "task_fix_setuid",
        "security_task_fix_setuid",
        "chaos_lsm_setuid",
        "chaos_fmod_setuid",
    ),
    hook(
        op::SETGID,
        "task_fix_setgid",
        "security_task_fix_setgid",
        "chaos_lsm_setgid",
        "chaos_fmod_setgid",
    ),
];

/// The hooks that see any of `ops`.
pub fn hooks_for(ops: u64) -> impl Iterator<Item = &'static Hook> {
    HOOKS.iter().filter(move |h| h.ops & ops != 0)
}

/// The running kernel's type information.
pub fn kernel_btf() -> Result<btf_rs::Btf, LoadError> {
    btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").map_err(|e| LoadError::Btf(e.to_string()))
}

/// The offsets the path walk reads, from the kernel's BTF.
pub fn kernel_offsets(btf: &btf_rs::Btf) -> Result<KernelOffsets, LoadError> {
    let at = |s: &str, f: &str| member_offset(btf, s, f);
    Ok(KernelOffsets {
        file_path: at("file", "f_path")?,
        path_mnt: at("path", "mnt")?,
        path_dentry: at("path", "dentry")?,
        dentry_parent: at("dentry", "d_parent")?,
        dentry_inode: at("dentry", "d_inode")?,
        inode_ino: at("inode", "i_ino")?,
        inode_sb: at("inode", "i_sb")?,
        sb_dev: at("super_block", "s_dev")?,
        mount_mnt: at("mount", "mnt")?,
        mount_parent: at("mount", "mnt_parent")?,
        mount_mountpoint: at("mount", "mnt_mountpoint")?,
        task_files: at("task_struct", "files")?,
        files_fdt: at("files_struct", "fdt")?,
        fdt_max_fds: at("fdtable", "max_fds")?,
        fdt_fd: at("fdtable", "fd")?,
        file_mode: at("file", "f_mode")?,
        valid: 1,
        _pad: [0; 3],
    })
}

/// The byte offset of `field` in `struct name`, looking into anonymous members.
fn member_offset(btf: &btf_rs::Btf, name: &str, field: &str) -> Result<u32, LoadError> {
    let missing = || {
        LoadError::Btf(format!(
            "the kernel's BTF has no `struct {name}` with `{field}`"
        ))
    };
    let types = btf.resolve_types_by_name(name).map_err(|_| missing())?;
    types
        .iter()
        .find_map(|t| match t {
            btf_rs::Type::Struct(s) if !s.members.is_empty() => find_member(btf, s, field, 0),
            _ => None,
        })
        .map(|bits| bits / 8)
        .ok_or_else(missing)
}

fn find_member(btf: &btf_rs::Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
    for member in &s.members {
        let offset = base + member.bit_offset();
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            return Some(offset);
        }
        if name.is_empty() {
            if let Ok(btf_rs::Type::Struct(inner) | btf_rs::Type::Union(inner)) =
                btf.resolve_chained_type(member)
            {
                if let Some(found) = find_member(btf, &inner, field, offset) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// The key under which the walk finds `path`: its device, in the kernel's own encoding, and
/// inode number.
pub fn path_key(path: &Path) -> std::io::Result<PathKey> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Ok(PathKey {
        ino: meta.ino(),
        dev: (major << 20) | minor,
        _pad: 0,
    })
}

/// A modify-return program, loaded, and its link once attached; closing the link detaches it.
pub struct ModifyReturn {
    pub hook: &'static Hook,
    program: OwnedFd,
    link: Option<OwnedFd>,
}

impl ModifyReturn {
    /// Links the program to its kernel function (`BPF_RAW_TRACEPOINT_OPEN` without a name,
    /// which every kernel with trampolines takes).
    pub fn attach(&mut self) -> Result<(), LoadError> {
        if self.link.is_some() {
            return Ok(());
        }
        // SAFETY: all-zero is a valid `bpf_attr`.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.raw_tracepoint.prog_fd = self.program.as_raw_fd() as u32;
        let link = bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr).map_err(|source| {
            LoadError::HandAttach {
                program: self.hook.fmod_program,
                function: self.hook.function,
                source,
            }
        })?;
        self.link = Some(link);
        Ok(())
    }
}

/// Loads (verifies) the modify-return programs of `hooks` from the object, relocated against
/// the maps `ebpf` created; attaches nothing.
pub fn load_modify_return(
    object: &[u8],
    ebpf: &Ebpf,
    btf: &aya::Btf,
    hooks: &[&'static Hook],
) -> Result<Vec<ModifyReturn>, LoadError> {
    let mut obj = aya_obj::Object::parse(object).map_err(|e| LoadError::Relocate(e.to_string()))?;
    let fds: Vec<(String, RawFd)> = ebpf
        .maps()
        .filter_map(|(name, map)| map_fd(map).map(|fd| (name.to_string(), fd)))
        .collect();
    let defs = obj.maps.clone();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        fds.iter()
            .filter_map(|(name, fd)| defs.get(name).map(|def| (name.as_str(), *fd, def))),
        &text_sections,
    )
    .map_err(|e| LoadError::Relocate(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| LoadError::Relocate(e.to_string()))?;
    let mut loaded = Vec::new();
    for hook in hooks {
        let program = obj
            .programs
            .get(hook.fmod_program)
            .ok_or(LoadError::Missing(hook.fmod_program))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or(LoadError::Missing(hook.fmod_program))?;
        let target = function_id(btf, hook.function)?;
        loaded.push(ModifyReturn {
            hook,
            program: prog_load(hook.fmod_program, &function.instructions, target)?,
            link: None,
        });
    }
    Ok(loaded)
}

/// The descriptor of a map aya created.
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// The BTF id of a kernel function.
fn function_id(btf: &aya::Btf, name: &'static str) -> Result<u32, LoadError> {
    btf.id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
        .map_err(|_| LoadError::NoFunction(name))
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a whole, zero-initialised `bpf_attr` whose pointers point at buffers
    // that outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_PROG_LOAD` of a tracing program with the modify-return attach type; on refusal, once
/// more with the verifier's log.
fn prog_load(
    name: &'static str,
    insns: &[aya_obj::generated::bpf_insn],
    target: u32,
) -> Result<OwnedFd, LoadError> {
    let license = CString::from(c"GPL");
    let attempt = |log: Option<&mut Vec<u8>>| {
        // SAFETY: all-zero is a valid `bpf_attr`, and the fields set are those of PROG_LOAD.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: PROG_LOAD's member of the union.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
        load.expected_attach_type = bpf_attach_type::BPF_MODIFY_RETURN as u32;
        load.insns = insns.as_ptr() as u64;
        load.insn_cnt = insns.len() as u32;
        load.license = license.as_ptr() as u64;
        load.attach_btf_id = target;
        for (slot, byte) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *slot = byte as libc::c_char;
        }
        if let Some(log) = log {
            load.log_level = 1;
            load.log_buf = log.as_mut_ptr() as u64;
            load.log_size = log.len() as u32;
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    attempt(None).or_else(|_| {
        let mut log = vec![0u8; 1 << 20];
        attempt(Some(&mut log)).map_err(|source| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            LoadError::HandLoad {
                program: name,
                source,
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_hooks() {
        let mut seen = 0u64;
        for hook in HOOKS {
            // Only `open` is seen twice: at file_open, and at path_mknod when it creates.
            assert_eq!(seen & hook.ops & !op::OPEN, 0, "{} repeats an op", hook.lsm);
            seen |= hook.ops;
        }
        assert_eq!(seen, (op::LOCK << 1) - 1, "an op without a hook");
        let open: Vec<&str> = hooks_for(op::OPEN).map(|h| h.lsm).collect();
        assert_eq!(open, ["file_open", "path_mknod"]);
    }

    /// Every hook names a kernel function and an LSM hook this machine's kernel has, so that
    /// a misspelt name shows here rather than as a refusal on some kernel.
    #[test]
    fn hooks_name_functions_of_the_running_kernel() {
        let Ok(btf) = aya::Btf::from_sys_fs() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux (kernel without BTF)");
            return;
        };
        let lsm = function_id(&btf, "bpf_lsm_file_open").is_ok();
        for hook in HOOKS {
            function_id(&btf, hook.function).unwrap();
            if lsm {
                let name = format!("bpf_lsm_{}", hook.lsm);
                assert!(
                    btf.id_by_type_name_kind(&name, aya_obj::btf::BtfKind::Func)
                        .is_ok(),
                    "{name}"
                );
            }
        }
    }

    /// The walk's offsets come from this machine's kernel; `struct path` is two pointers,
    /// `mnt` first, on every kernel.
    #[test]
    fn offsets_come_from_the_running_kernel() {
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux (kernel without BTF)");
            return;
        }
        let offsets = kernel_offsets(&kernel_btf().unwrap()).unwrap();
        assert_eq!((offsets.path_mnt, offsets.path_dentry), (0, 8));
        assert!(offsets.file_path > 0 && offsets.dentry_inode > 0 && offsets.mount_mnt > 0);
        assert!(offsets.mount_parent != offsets.mount_mountpoint);
    }
}
