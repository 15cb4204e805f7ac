//! `cargo xtask vm`: runs a command as root in a guest that boots Debian's packaged kernel,
//! with the host's file system visible read-only and the work tree writable at its own path.
//!
//! The guest boots from a small busybox initramfs that loads the 9p and overlay modules of the
//! guest kernel, mounts the host root over 9p, puts tmpfs over the folders that must be
//! writable, mounts the work tree and a control folder, and switches root. The second stage
//! mounts the kernel file systems and cgroup2 (the host's hybrid layout or a plain cgroup2 mount
//! with controllers), runs the command, writes its exit status to the control folder and powers
//! off. Under TCG a boot takes about 10 to 15 seconds.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::util::{self, root, warn_on_err};

fn tempdir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("chaos-vm-")
        .tempdir()
        .context("create a temporary folder")
}

/// Packages the guest needs, all from apt.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    "cpio",
];
/// Modules the initramfs loads, in order, to reach the 9p root.
const MODULES: &[&str] = &[
    "netfs",
    "fscache",
    "9pnet",
    "9p",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "9pnet_virtio",
    "overlay",
];
/// Printed by the guest right before the command, so that boot noise can be told from output.
const START_MARKER: &str = "chaos-vm: running the command";
/// Printed by the guest after the command; what follows is the power-off.
const END_MARKER: &str = "chaos-vm: the command finished";

/// Why a guest did not run its command to the end.
#[derive(Debug)]
pub enum GuestError {
    /// SIGINT, SIGTERM or SIGHUP reached xtask; qemu was killed.
    Interrupted,
    /// The guest outlived its timeout; qemu was killed.
    TimedOut(u64),
    /// The guest stopped before the command finished (a boot failure, a kernel panic).
    Broken,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestError::Interrupted => f.write_str("the guest was interrupted; qemu was stopped"),
            GuestError::TimedOut(s) => {
                write!(f, "the guest timed out after {s}s; qemu was stopped")
            }
            GuestError::Broken => f.write_str("the guest stopped before the command finished"),
        }
    }
}

impl std::error::Error for GuestError {}

impl GuestError {
    /// The status of `cargo xtask vm` for this failure, apart from any command's own:
    /// 130 interrupted, 124 timed out (as timeout(1)), 125 a broken guest.
    pub fn exit_status(&self) -> i32 {
        match self {
            GuestError::Interrupted => 130,
            GuestError::TimedOut(_) => 124,
            GuestError::Broken => 125,
        }
    }
}

/// How cgroup2 is mounted in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupLayout {
    /// As on these hosts: cgroup2 at /sys/fs/cgroup/unified, no controllers.
    Hybrid,
    /// As on most users' machines: cgroup2 at /sys/fs/cgroup with controllers enabled.
    V2,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Extra kernel command line, for example `lsm=lockdown,capability` (no BPF LSM).
    #[arg(long, value_name = "KERNEL ARGS")]
    pub append: Option<String>,
    /// How cgroup2 is mounted in the guest.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub cgroup: CgroupLayout,
    /// Seconds before a guest that has not finished is killed.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// The command to run as root in the guest, in the work tree.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The `vm` task.
pub fn run(args: Args) -> Result<i32> {
    let guest = Guest::prepare()?;
    guest.run(
        &args.command,
        args.append.as_deref(),
        args.cgroup,
        Duration::from_secs(args.timeout),
    )
}

/// A bootable guest: kernel and initramfs.
pub struct Guest {
    kernel: PathBuf,
    initramfs: PathBuf,
    accel: &'static str,
}

impl Guest {
    /// Installs what is missing, builds the initramfs once per kernel, and decides KVM or TCG.
    pub fn prepare() -> Result<Guest> {
        crate::setup::ensure_apt_packages(PACKAGES)?;
        let (kernel, version) = guest_kernel()?;
        let cache = root().join(".tools/vm");
        fs::create_dir_all(&cache)?;
        // Named by the init script too, so that a changed script builds a new one.
        let script = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::hash::DefaultHasher::new();
            INIT.hash(&mut hasher);
            MODULES.hash(&mut hasher);
            hasher.finish()
        };
        let initramfs = cache.join(format!("initramfs-{version}-{script:016x}.cpio.gz"));
        if !initramfs.exists() {
            build_initramfs(&version, &initramfs)?;
        }
        let mut guest = Guest {
            kernel,
            initramfs,
            accel: "tcg",
        };
        guest.accel = guest.decide_accel(&cache)?;
        Ok(guest)
    }

    /// KVM only where it really runs the guest: tried once, the answer kept in `.tools/vm`.
    fn decide_accel(&self, cache: &Path) -> Result<&'static str> {
        let remembered = cache.join("accel");
        if let Ok(text) = fs::read_to_string(&remembered) {
            return Ok(if text.trim() == "kvm" { "kvm" } else { "tcg" });
        }
        let mut accel = "tcg";
        if fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
        {
            eprintln!("xtask: trying the guest under KVM once (at most 30 s)");
            let trial = Guest {
                kernel: self.kernel.clone(),
                initramfs: self.initramfs.clone(),
                accel: "kvm",
            };
            let command = ["true".to_string()];
            let timeout = Duration::from_secs(30);
            match trial.boot(&command, None, CgroupLayout::Hybrid, timeout, true) {
                Ok(0) => accel = "kvm",
                Err(e) if matches!(e.downcast_ref(), Some(GuestError::Interrupted)) => {
                    return Err(e);
                }
                Ok(_) | Err(_) => {}
            }
        }
        eprintln!(
            "xtask: the guest runs under {accel} (kept in {})",
            remembered.display()
        );
        fs::write(&remembered, accel)?;
        Ok(accel)
    }

    /// Boots, runs the command, and returns its exit status.
    pub fn run(
        &self,
        command: &[String],
        append: Option<&str>,
        cgroup: CgroupLayout,
        timeout: Duration,
    ) -> Result<i32> {
        eprintln!(
            "xtask: booting {} under {} ({cgroup:?} cgroup)",
            self.kernel.display(),
            self.accel
        );
        self.boot(command, append, cgroup, timeout, false)
    }

    fn boot(
        &self,
        command: &[String],
        append: Option<&str>,
        cgroup: CgroupLayout,
        timeout: Duration,
        quiet: bool,
    ) -> Result<i32> {
        let tmp = tempdir()?;
        let ctl = tmp.path().join("ctl");
        fs::create_dir(&ctl)?;
        let work = root();
        fs::write(ctl.join("workdir"), format!("{}\n", work.display()))?;
        // Markers no command prints by chance.
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        fs::write(ctl.join("stage2"), stage2(cgroup, &nonce))?;
        fs::write(ctl.join("cmd"), format!("{}\n", shell_words(command)))?;
        fs::write(ctl.join("env"), passed_env())?;

        let mut cmdline = "console=ttyS0 panic=-1 quiet".to_string();
        if let Some(extra) = append {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        let mut qemu = Command::new("qemu-system-x86_64");
        if self.accel == "kvm" {
            qemu.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            qemu.args(["-accel", "tcg", "-cpu", "max"]);
        }
        qemu.args([
            "-machine",
            "pc",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nodefaults",
            "-nographic",
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initramfs)
        .args(["-append", &cmdline])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=ctl,security_model=none",
            ctl.display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=work,security_model=none,multidevs=remap",
            work.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // SAFETY: prctl(2) between fork and exec changes only the child: should xtask die
        // without killing it (SIGKILL), the kernel kills qemu, which has no timeout of its own.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            // Its own process group: a terminal's Ctrl-C reaches xtask, which stops qemu and
            // says so, instead of qemu quitting on its own as if the guest had broken.
            qemu.process_group(0);
            qemu.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = qemu.spawn().context("start qemu-system-x86_64")?;
        let pid = child.id();

        let interrupted = Arc::new(AtomicBool::new(false));
        let mut registered = Vec::new();
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            registered.push(signal_hook::flag::register(signal, interrupted.clone())?);
        }

        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let err_reader = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let (start, end) = (
            format!("{START_MARKER} {nonce}"),
            format!("{END_MARKER} {nonce}"),
        );
        let out_reader = std::thread::spawn(move || {
            let mut boot = Vec::new();
            let mut started = false;
            let mut finished = false;
            // Bytes, not UTF-8 lines: the command may print anything, and a last line may lack
            // its newline.
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches('\r');
                if finished {
                    continue;
                } else if line == end {
                    finished = true;
                } else if started {
                    if !quiet {
                        println!("{line}");
                    }
                } else if line == start {
                    started = true;
                } else {
                    boot.push(line.to_string());
                }
            }
            (started, boot)
        });

        let begun = Instant::now();
        let mut ended_by = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                if interrupted.load(Ordering::Relaxed) {
                    ended_by = Some(GuestError::Interrupted);
                }
                break Some(status);
            }
            if interrupted.load(Ordering::Relaxed) {
                ended_by = Some(GuestError::Interrupted);
            } else if begun.elapsed() > timeout {
                ended_by = Some(GuestError::TimedOut(timeout.as_secs()));
            }
            if ended_by.is_some() {
                warn_on_err(child.kill(), format!("kill qemu (pid {pid})"));
                warn_on_err(child.wait(), format!("reap qemu (pid {pid})"));
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for id in registered {
            signal_hook::low_level::unregister(id);
        }
        let (started, boot) = out_reader.join().expect("the console reader");
        let qemu_err = err_reader.join().expect("the stderr reader");
        if let Some(why) = ended_by {
            return Err(why.into());
        }
        let exit = fs::read_to_string(ctl.join("exit"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match exit {
            Some(code) => Ok(code),
            None => {
                if !quiet {
                    let status = status.map(|s| s.to_string()).unwrap_or_default();
                    eprintln!(
                        "xtask: the guest stopped (qemu: {status}) before the command finished"
                    );
                    if !started {
                        for line in boot.iter().chain(&qemu_err) {
                            eprintln!("  {}", printable(line));
                        }
                    }
                }
                Err(GuestError::Broken.into())
            }
        }
    }
}

/// A console line without control characters (SeaBIOS resets the terminal otherwise).
fn printable(line: &str) -> String {
    line.chars().filter(|c| !c.is_control()).collect()
}

/// The newest packaged kernel whose modules include what the initramfs needs.
fn guest_kernel() -> Result<(PathBuf, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/boot")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            if Path::new("/lib/modules")
                .join(version)
                .join("kernel/fs/9p")
                .exists()
            {
                found.push(version.to_string());
            }
        }
    }
    // Numbers compare as numbers: 6.1.0-57 is newer than 6.1.0-9.
    found.sort_by_key(|v| {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    let version = found.pop().context(
        "no packaged kernel with 9p modules in /boot; `apt-get install linux-image-amd64`",
    )?;
    Ok((PathBuf::from(format!("/boot/vmlinuz-{version}")), version))
}

fn build_initramfs(version: &str, out: &Path) -> Result<()> {
    eprintln!("xtask: building the guest's initramfs for {version}");
    let tmp = tempdir()?;
    let tree = tmp.path().join("tree");
    for dir in ["bin", "lib/modules", "proc", "sys", "dev", "newroot"] {
        fs::create_dir_all(tree.join(dir))?;
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copy busybox (busybox-static)")?;
    let modules = Path::new("/lib/modules").join(version).join("kernel");
    for module in MODULES {
        let file = find_file(&modules, &format!("{module}.ko"))
            .with_context(|| format!("module {module} of kernel {version}"))?;
        fs::copy(&file, tree.join("lib/modules").join(format!("{module}.ko")))?;
    }
    let init = tree.join("init");
    fs::write(&init, INIT.replace("@MODULES@", &MODULES.join(" ")))?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    // A name of its own: two first runs at once must not write the same file.
    let partial = out.with_extension(format!("partial-{}", std::process::id()));
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        tree.display(),
        partial.display()
    );
    util::run(Command::new("sh").args(["-c", &script]))?;
    fs::rename(&partial, out)?;
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let path = entry.path();
        if entry.file_type().ok()?.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// The initramfs's /init: reach the host root over 9p and switch to it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "chaos-vm: $*"; echo o > /proc/sysrq-trigger; sleep 10; }
for m in @MODULES@; do insmod /lib/modules/$m.ko || fail "insmod $m failed"; done
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $o,ro hostroot /newroot || fail "cannot mount the host root"
for d in tmp run var/tmp var/lib var/log root; do mount -t tmpfs tmpfs /newroot/$d; done
mkdir -p /newroot/run/chaos-vm
mount -t 9p -o $o ctl /newroot/run/chaos-vm || fail "cannot mount the control folder"
work=$(cat /newroot/run/chaos-vm/workdir)
# A work tree below one of the tmpfs folders (a clone in /tmp) needs its mount point made there.
mkdir -p "/newroot$work" 2>/dev/null
mount -t 9p -o $o work "/newroot$work" || fail "cannot mount the work tree at $work"
exec switch_root /newroot /bin/sh /run/chaos-vm/stage2
"#;

/// The second stage, in the host's root: kernel file systems, cgroup2, the command.
fn stage2(cgroup: CgroupLayout, nonce: &str) -> String {
    let cgroup = match cgroup {
        CgroupLayout::Hybrid => {
            "mount -t tmpfs cgroup /sys/fs/cgroup\nmkdir /sys/fs/cgroup/unified\n\
             mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified\n"
        }
        CgroupLayout::V2 => {
            "mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
             echo '+cpu +memory +io +pids' > /sys/fs/cgroup/cgroup.subtree_control \\\n\
             || echo 'chaos-vm: cannot enable the cgroup controllers'\n"
        }
    };
    format!(
        r#"mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
{cgroup}ip link set lo up
hostname chaos-vm
cd "$(cat /run/chaos-vm/workdir)"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
. /run/chaos-vm/env
printf '\n%s\n' "{START_MARKER} {nonce}"
sh /run/chaos-vm/cmd < /dev/null
echo $? > /run/chaos-vm/exit
printf '\n%s\n' "{END_MARKER} {nonce}"
sync
echo o > /proc/sysrq-trigger
sleep 10
"#
    )
}

/// Variables the command sees in the guest too.
fn passed_env() -> String {
    let mut out = String::new();
    for (key, value) in std::env::vars() {
        let shell_name = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let passed = shell_name
            && (key.starts_with("CHAOS_") || key == "RUST_LOG" || key == "RUST_BACKTRACE");
        if passed {
            out += &format!("export {key}={}\n", shell_quote(&value));
        }
    }
    out
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_words_for_the_guest_shell() {
        let words = vec!["echo".to_string(), "it's".to_string(), "a b".to_string()];
        assert_eq!(shell_words(&words), r#"'echo' 'it'\''s' 'a b'"#);
    }
}
