//! Resource and state faults: their effect on a real filesystem that the test makes.
#![allow(clippy::print_stdout, reason = "tests print their measurements")]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use chaos_user::cgroup::v1;

use chaos_tests::{
    Injector, TestCgroup, chaos_user, root_or_skip, run, runtime_dir, skip, undo_logs,
};

/// An ext4 filesystem in a file, loop-mounted on a directory of the test's own; unmounted and
/// removed at the end.
struct LoopFs {
    dir: PathBuf,
    image: PathBuf,
}

impl LoopFs {
    /// `mib` MiB, or None (after a printed skip) where loop devices or mkfs.ext4 are missing.
    fn new(label: &str, mib: u64) -> Option<LoopFs> {
        let base = std::env::temp_dir().join(format!("chaos-{label}-{}", std::process::id()));
        let (dir, image) = (base.with_extension("mnt"), base.with_extension("img"));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let file = std::fs::File::create(&image).expect("create the image");
        file.set_len(mib << 20).expect("size the image");
        let (status, _, stderr) = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        if !status.success() {
            skip(&format!("mkfs.ext4 (e2fsprogs) failed: {stderr}"));
            return None;
        }
        let (status, _, stderr) = run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir));
        if !status.success() {
            let _removed = std::fs::remove_file(&image);
            skip(&format!("loop devices (CONFIG_BLK_DEV_LOOP): {stderr}"));
            return None;
        }
        Some(LoopFs { dir, image })
    }

    /// (used, available) bytes, as `df` counts them.
    fn space(&self) -> (u64, u64) {
        let s = chaos_user::fill::space(&self.dir).expect("statvfs");
        (s.used, s.available)
    }

    fn fill_files(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .expect("list the filesystem")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".chaos-fill-"))
            .collect()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _unmounted = run(Command::new("umount").arg(&self.dir));
        let _removed = std::fs::remove_dir(&self.dir);
        let _removed = std::fs::remove_file(&self.image);
    }
}

const MIB: u64 = 1 << 20;

/// Writes `bytes` into a new file under `dir`; the errno it stopped at, or 0.
fn write_file(dir: &Path, bytes: u64) -> i32 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join("data")).expect("create");
    let chunk = vec![1u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        if let Err(e) = file.write_all(&chunk[..n]).and_then(|()| file.sync_all()) {
            return e.raw_os_error().unwrap_or(-1);
        }
        left -= n as u64;
    }
    0
}

#[test]
fn disk_fill_leaves_the_asked_free_space_and_removes_its_file() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new("disk-fill", 64) else {
        return;
    };
    let (_, before) = fs.space();
    let spec = format!("disk-fill:path={},free=8MiB", fs.dir.display());
    let injector = Injector::start(&["inject", "--fault", &spec]);
    let (_, during) = fs.space();
    println!("available: {before} before, {during} during");
    assert!(
        (7 * MIB..=8 * MIB).contains(&during),
        "8 MiB asked, {during} left"
    );
    assert_eq!(fs.fill_files().len(), 1);
    assert_eq!(
        write_file(&fs.dir, 16 * MIB),
        libc::ENOSPC,
        "a write past it"
    );
    std::fs::remove_file(fs.dir.join("data")).expect("remove the data");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(fs.fill_files().is_empty(), "the fill is gone");
    let (_, after) = fs.space();
    assert!(
        after + MIB >= before,
        "the space came back: {after} of {before}"
    );
    assert_eq!(write_file(&fs.dir, 16 * MIB), 0, "after the session");
}

#[test]
fn disk_fill_by_share_in_use() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new("disk-use", 64) else {
        return;
    };
    let spec = format!("disk-fill:path={},use=90%", fs.dir.display());
    let injector = Injector::start(&["inject", "--fault", &spec]);
    let (used, available) = fs.space();
    let share = 100.0 * used as f64 / (used + available) as f64;
    println!("in use: {share:.2}%");
    assert!(
        (90.0..91.0).contains(&share),
        "90% asked, {share:.2}% in use"
    );
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(fs.fill_files().is_empty());
}

#[test]
fn disk_fill_after_sigkill_is_removed_by_recover() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new("disk-kill", 64) else {
        return;
    };
    let (_, before) = fs.space();
    let spec = format!("disk-fill:path={},free=4MiB", fs.dir.display());
    let mut injector = Injector::start(&["inject", "--fault", &spec]);
    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    assert_eq!(
        fs.fill_files().len(),
        1,
        "a killed injector leaves its fill"
    );
    let logged = undo_logs().iter().any(|name| {
        std::fs::read_to_string(runtime_dir().join(name))
            .is_ok_and(|text| text.contains(".chaos-fill-"))
    });
    assert!(logged, "and its undo log says so");
    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    assert!(status.success(), "recover: {stdout} {stderr}");
    assert!(fs.fill_files().is_empty(), "recover removed the fill");
    let (_, after) = fs.space();
    assert!(
        after + MIB >= before,
        "the space came back: {after} of {before}"
    );
}

#[test]
fn disk_fill_refuses_what_is_not_a_directory() {
    if !root_or_skip() {
        return;
    }
    for spec in [
        "disk-fill:path=/nonexistent/dir,free=1MiB",
        "disk-fill:path=/etc/hostname,free=1MiB",
        "disk-fill:path=relative,free=1MiB",
        "disk-fill:path=/tmp,free=1MiB,use=50%",
    ] {
        let (status, _, stderr) = run(chaos_user().args(["inject", "--fault", spec]));
        assert_eq!(status.code(), Some(2), "{spec}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{spec}: one line: {stderr}");
    }
}

/// The share of `path`'s pages in the page cache (mincore).
fn resident(path: &Path) -> f64 {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).expect("open");
    let len = file.metadata().expect("stat").len() as usize;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: a read-only shared mapping of a file this function holds open, unmapped before
    // it returns; mincore writes one byte per page into a vector of that many.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0, "mincore");
        libc::munmap(addr, len);
    }
    vec.iter().filter(|b| *b & 1 != 0).count() as f64 / pages as f64
}

/// Reads all of `path`, which puts it in the page cache.
fn read_all(path: &Path) {
    let data = std::fs::read(path).expect("read");
    assert!(!data.is_empty());
}

#[test]
fn page_cache_drops_the_cached_pages_under_the_path() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new("page-cache", 64) else {
        return;
    };
    let sub = fs.dir.join("sub");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let (inside, outside) = (sub.join("cold"), fs.dir.join("warm"));
    for file in [&inside, &outside] {
        std::fs::write(file, vec![7u8; 8 * MIB as usize]).expect("write");
        let (status, _, _) = run(Command::new("sync").arg(file));
        assert!(status.success());
        read_all(file);
        assert!(resident(file) > 0.99, "cached after a read");
    }
    let report = std::env::temp_dir().join(format!("chaos-cache-{}.json", std::process::id()));
    let spec = format!("page-cache:path={},interval=200ms", sub.display());
    let injector = Injector::start(&[
        "inject",
        "--fault",
        &spec,
        "--json",
        report.to_str().expect("UTF-8"),
    ]);
    let cold = resident(&inside);
    println!(
        "resident under the path: {cold:.3}, beside it: {:.3}",
        resident(&outside)
    );
    assert!(cold < 0.05, "dropped at the start: {cold}");
    assert!(
        resident(&outside) > 0.99,
        "a file beside the path stays cached"
    );
    read_all(&inside);
    std::thread::sleep(std::time::Duration::from_millis(600));
    let again = resident(&inside);
    assert!(again < 0.05, "dropped again on the interval: {again}");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
    std::fs::remove_file(&report).expect("remove the report");
    let dropped = r["faults"][0]["files"]["injected"].as_u64().expect("count");
    assert!(dropped >= 3, "one file, three rounds at least: {r}");
}

#[test]
fn corrupt_file_breaks_a_sqlite_database_until_restored() {
    if !root_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("chaos-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let db = dir.join("db");
    let sql = |statement: &str| {
        let (status, stdout, stderr) =
            run(Command::new("/usr/bin/sqlite3").arg(&db).arg(statement));
        (status.success(), format!("{stdout}{stderr}"))
    };
    let (ok, out) = sql(
        "create table t(x); with recursive c(i) as (select 1 union all select i+1 from c \
         where i<2000) insert into t select printf('row %d and some text', i) from c;",
    );
    assert!(ok, "{out}");
    assert_eq!(sql("pragma integrity_check;").1.trim(), "ok");
    let before = std::fs::read(&db).expect("read the database");

    let spec = format!(
        "corrupt-file:path={},mode=torn,offset=8KiB,len=1",
        db.display()
    );
    let (status, _, stderr) =
        run(chaos_user().args(["inject", "--fault", &spec, "--duration", "1s"]));
    assert!(status.success(), "{stderr}");
    let (_, check) = sql("pragma integrity_check;");
    println!(
        "after the damage: {}",
        check.lines().next().unwrap_or_default()
    );
    assert_ne!(check.trim(), "ok", "the damage shows");
    let (_, listed, _) = run(chaos_user().arg("recover"));
    assert!(
        listed.contains(&format!("saved original of {}", db.display())),
        "{listed}"
    );
    assert_ne!(
        std::fs::read(&db).expect("read"),
        before,
        "recover leaves the damage"
    );

    let restore = ["inject", "--restore", "--fault"];
    let (status, _, stderr) = run(chaos_user()
        .args(restore)
        .arg(format!("corrupt-file:path={}", db.display())));
    assert!(status.success(), "{stderr}");
    assert_eq!(sql("pragma integrity_check;").1.trim(), "ok", "restored");
    assert_eq!(std::fs::read(&db).expect("read"), before, "byte for byte");
    let (status, _, stderr) = run(chaos_user()
        .args(restore)
        .arg(format!("corrupt-file:path={}", db.display())));
    assert_eq!(status.code(), Some(2), "nothing left to restore: {stderr}");
    std::fs::remove_dir_all(&dir).expect("remove the test directory");
}

#[test]
fn corrupt_file_bitflips_replay_from_the_reported_seed() {
    if !root_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("chaos-bitflip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let report = dir.join("report.json");
    // Damages a file of zeros, puts the original back, and returns the damaged bytes and the
    // report.
    let flip = |name: &str, extra: &str| {
        let file = dir.join(name);
        std::fs::write(&file, vec![0u8; 4096]).expect("write");
        let spec = format!("corrupt-file:path={},count=16{extra}", file.display());
        let (status, _, stderr) = run(chaos_user()
            .args(["inject", "--duration", "1s", "--json"])
            .arg(&report)
            .args(["--fault", &spec]));
        assert!(status.success(), "{stderr}");
        let damaged = std::fs::read(&file).expect("read");
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
        let restore = format!("corrupt-file:path={}", file.display());
        let (status, _, stderr) =
            run(chaos_user().args(["inject", "--restore", "--fault", &restore]));
        assert!(status.success(), "{stderr}");
        assert!(std::fs::read(&file).expect("read").iter().all(|b| *b == 0));
        (damaged, r)
    };
    let (first, r) = flip("a", "");
    assert_eq!(
        first.iter().map(|b| b.count_ones()).sum::<u32>(),
        16,
        "16 distinct bits"
    );
    assert_eq!(r["faults"][0]["bits"]["injected"], 16, "{r}");
    let seed = r["faults"][0]["fault"]["seed"]
        .as_u64()
        .expect("the seed is reported");
    let (again, _) = flip("b", &format!(",seed={seed}"));
    assert_eq!(again, first, "the reported seed replays the same bits");
    std::fs::remove_dir_all(&dir).expect("remove the test directory");
}

/// CPU time the cgroup's processes used so far, in seconds (cgroup v2 `cpu.stat`, which every
/// cgroup2 directory has, with or without the cpu controller).
fn cpu_seconds(cg: &TestCgroup) -> f64 {
    let stat = std::fs::read_to_string(cg.path.join("cpu.stat")).expect("cpu.stat");
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .expect("usage_usec");
    usec as f64 / 1e6
}

/// The cgroup's memory in bytes: `memory.current` where cgroup v2 has the memory controller,
/// else the resident memory of its processes (hybrid hosts keep memory accounting in v1).
fn memory_bytes(cg: &TestCgroup) -> u64 {
    if let Ok(text) = std::fs::read_to_string(cg.path.join("memory.current")) {
        return text.trim().parse().expect("memory.current");
    }
    let procs = std::fs::read_to_string(cg.path.join("cgroup.procs")).unwrap_or_default();
    procs
        .split_whitespace()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            let line = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 1024
}

#[test]
fn cpu_hog_uses_about_its_load_in_the_cgroup() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let spec = "cpu-hog:workers=2,load=25%";
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", spec]);
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (Instant::now(), cpu_seconds(&target));
    std::thread::sleep(Duration::from_secs(2));
    let rate = (cpu_seconds(&target) - c0) / t0.elapsed().as_secs_f64();
    println!("the cgroup used {rate:.3} CPUs; 2 workers at 25% ask 0.5");
    assert!((0.35..0.65).contains(&rate), "{rate:.3} CPUs");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(!target.populated(), "the stressors are gone");
}

#[test]
fn memory_leak_grows_at_about_its_rate_then_holds() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let spec = "memory-leak:rate=40MiB/s,max=96MiB";
    let injector = Injector::start(&["inject", "--cgroup", &target.name, "--fault", spec]);
    std::thread::sleep(Duration::from_millis(500));
    let (t0, m0) = (Instant::now(), memory_bytes(&target));
    std::thread::sleep(Duration::from_millis(1000));
    let (t1, m1) = (t0.elapsed().as_secs_f64(), memory_bytes(&target));
    let rate = (m1 as f64 - m0 as f64) / t1 / MIB as f64;
    println!("grew {rate:.1} MiB/s; 40 asked");
    assert!((28.0..52.0).contains(&rate), "{rate:.1} MiB/s");
    std::thread::sleep(Duration::from_millis(2000));
    let held = memory_bytes(&target);
    println!("holds {} MiB; 96 asked", held / MIB);
    assert!((90 * MIB..120 * MIB).contains(&held), "{held}");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(!target.populated(), "the stressor is gone");
}

#[test]
fn stressors_die_with_a_killed_injector() {
    if !root_or_skip() {
        return;
    }
    let target = TestCgroup::new("target");
    let mut injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "memory-pressure:size=32MiB",
        "--fault",
        "cpu-hog:workers=1,load=10%",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(memory_bytes(&target) >= 32 * MIB, "the memory is held");
    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    let deadline = Instant::now() + Duration::from_secs(2);
    while target.populated() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!target.populated(), "the stressors died with chaos-user");
}

#[test]
fn restore_puts_back_owner_mode_times_and_every_link() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if !root_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("chaos-restore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (file, link, alias) = (dir.join("f"), dir.join("hard"), dir.join("sym"));
    std::fs::write(&file, vec![0xaau8; 10_000]).expect("write");
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).expect("chown");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4751)).expect("chmod");
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
    std::fs::hard_link(&file, &link).expect("hard link");
    std::os::unix::fs::symlink(&file, &alias).expect("symlink");
    let before = std::fs::metadata(&file).expect("stat");

    // Damaged through the symlink, restored through the file's own name.
    let spec = format!(
        "corrupt-file:path={},mode=zero-range,offset=10,len=5",
        alias.display()
    );
    let (status, _, stderr) =
        run(chaos_user().args(["inject", "--duration", "1s", "--fault", &spec]));
    assert!(status.success(), "{stderr}");
    assert!(
        std::fs::symlink_metadata(&alias)
            .expect("lstat")
            .is_symlink(),
        "the link stays"
    );
    assert_ne!(
        std::fs::read(&link).expect("read"),
        vec![0xaau8; 10_000],
        "damaged"
    );
    let restore = format!("corrupt-file:path={}", file.display());
    let (status, _, stderr) = run(chaos_user().args(["inject", "--restore", "--fault", &restore]));
    assert!(status.success(), "{stderr}");

    let after = std::fs::metadata(&file).expect("stat");
    assert_eq!((after.uid(), after.gid()), (65534, 65534), "owner");
    assert_eq!(after.mode() & 0o7777, 0o4751, "mode, setuid included");
    assert_eq!(after.modified().expect("mtime"), old, "modification time");
    assert_eq!(after.ino(), before.ino(), "the same file, in place");
    assert_eq!(
        std::fs::read(&link).expect("read"),
        vec![0xaau8; 10_000],
        "every link"
    );
    assert!(
        !runtime_dir().join("originals").exists(),
        "no saved copy left"
    );
    std::fs::remove_dir_all(&dir).expect("remove the test directory");
}

/// A cgroup at the root with the v2 `controller` enabled, or None after a printed skip.
fn with_controller(label: &str, controller: &str) -> Option<TestCgroup> {
    let root = chaos_tests::cgroup2_mount();
    let enabled = std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == controller) {
        skip(&format!(
            "the cgroup v2 {controller} controller (not enabled at the cgroup2 root: a hybrid \
             layout keeps it in v1)"
        ));
        return None;
    }
    Some(TestCgroup::at_root(label))
}

#[test]
fn cpu_throttle_caps_a_busy_loop_near_the_quota() {
    if !root_or_skip() {
        return;
    }
    let Some(target) = with_controller("throttle", "cpu") else {
        return;
    };
    let before = std::fs::read_to_string(target.path.join("cpu.max")).expect("cpu.max");
    let mut busy = Command::new("/bin/sh");
    busy.args(["-c", "while :; do :; done"]);
    target.put(&mut busy);
    let mut busy = busy.spawn().expect("start a busy loop");
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "cpu-throttle:quota=20%",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (Instant::now(), cpu_seconds(&target));
    std::thread::sleep(Duration::from_secs(3));
    let rate = (cpu_seconds(&target) - c0) / t0.elapsed().as_secs_f64();
    println!("the busy loop got {rate:.3} CPUs under a 20% quota");
    assert!((0.12..0.28).contains(&rate), "{rate:.3} CPUs");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    let after = std::fs::read_to_string(target.path.join("cpu.max")).expect("cpu.max");
    assert_eq!(after, before, "the quota is lifted");
    busy.kill().expect("stop the busy loop");
    busy.wait().expect("reap the busy loop");
}

#[test]
fn memory_limit_kills_what_outgrows_it_and_is_lifted_by_recover() {
    if !root_or_skip() {
        return;
    }
    let Some(target) = with_controller("memlimit", "memory") else {
        return;
    };
    let before = std::fs::read_to_string(target.path.join("memory.max")).expect("memory.max");
    let mut injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "memory-pressure:limit=32MiB",
    ]);
    let mut grow = Command::new("/usr/bin/python3");
    grow.args(["-c", "b = bytearray(128 << 20); print(len(b))"]);
    target.put(&mut grow);
    let (status, _, _) = run(&mut grow);
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "OOM-killed under the limit"
    );
    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    let during = std::fs::read_to_string(target.path.join("memory.max")).expect("memory.max");
    assert_eq!(
        during.trim(),
        (32 * MIB).to_string(),
        "a killed injector leaves its limit"
    );
    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    assert!(status.success(), "recover: {stdout} {stderr}");
    let after = std::fs::read_to_string(target.path.join("memory.max")).expect("memory.max");
    assert_eq!(after, before, "recover lifts it");
}

#[test]
fn cgroup_limits_are_refused_where_the_controller_is_not_enabled() {
    if !root_or_skip() {
        return;
    }
    // A cgroup whose parent gives it no controllers.
    let parent = TestCgroup::new("no-controllers");
    let target = parent.child("target");
    for (spec, controller, file) in [
        ("cpu-throttle:quota=20%", "cpu", "cpu.max"),
        ("memory-pressure:limit=64MiB", "memory", "memory.max"),
    ] {
        if let Some(mount) = v1::hierarchy(controller) {
            skip(&format!(
                "{controller} is a cgroup v1 controller here (at {}), which a session uses \
                 instead",
                mount.display()
            ));
            continue;
        }
        assert!(
            !target.path.join(file).exists(),
            "{file} in {}",
            target.name
        );
        let (status, _, stderr) = run(chaos_user().args([
            "inject",
            "--cgroup",
            &target.name,
            "--fault",
            spec,
            "--duration",
            "1s",
        ]));
        assert_eq!(status.code(), Some(3), "{spec}: {stderr}");
        assert!(stderr.contains("subtree_control"), "{spec}: {stderr}");
    }
}

/// The v1 group of `pid` in `controller`'s hierarchy, as /proc/PID/cgroup names it.
fn v1_group_name(pid: u32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    text.lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, name) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| name.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} line in /proc/{pid}/cgroup: {text}"))
}

/// The groups a session made in `controller`'s v1 hierarchy that still exist.
fn v1_groups_left(mount: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let mut dirs = vec![mount.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(v1::GROUP_PREFIX)
                {
                    left.push(entry.path());
                }
                dirs.push(entry.path());
            }
        }
    }
    left
}

/// The mount of `controller`'s v1 hierarchy, or None after a printed skip.
fn v1_or_skip(controller: &str) -> Option<PathBuf> {
    let mount = v1::hierarchy(controller);
    if mount.is_none() {
        skip(&format!(
            "a hybrid cgroup layout ({controller} is not a cgroup v1 controller here)"
        ));
    }
    mount
}

#[test]
fn cpu_throttle_on_a_hybrid_layout_moves_the_target_into_a_v1_group_and_back() {
    if !root_or_skip() {
        return;
    }
    let Some(mount) = v1_or_skip("cpu") else {
        return;
    };
    let target = TestCgroup::new("hybrid-cpu");
    let mut busy = Command::new("/bin/sh");
    busy.args(["-c", "while :; do :; done"]);
    target.put(&mut busy);
    let mut busy = busy.spawn().expect("start a busy loop");
    let pid = busy.id();
    let before = v1_group_name(pid, "cpu");
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "cpu-throttle:quota=20%",
    ]);
    let during = v1_group_name(pid, "cpu");
    assert!(
        during.starts_with(&format!("{}/", before.trim_end_matches('/')))
            && during.contains(v1::GROUP_PREFIX),
        "moved from {before} into a group below it: {during}"
    );
    // A process that joins the target later is moved in too, at the next tick.
    let mut late = target.sleeper(30);
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0) = (Instant::now(), cpu_seconds(&target));
    std::thread::sleep(Duration::from_secs(3));
    let rate = (cpu_seconds(&target) - c0) / t0.elapsed().as_secs_f64();
    println!("the busy loop got {rate:.3} CPUs under a 20% quota in v1 group {during}");
    assert!((0.12..0.28).contains(&rate), "{rate:.3} CPUs");
    assert_eq!(v1_group_name(late.id(), "cpu"), during, "the late process");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert_eq!(v1_group_name(pid, "cpu"), before, "back where it was");
    assert_eq!(v1_group_name(late.id(), "cpu"), before, "the late one too");
    assert_eq!(v1_groups_left(&mount), Vec::<PathBuf>::new());
    let (t0, c0) = (Instant::now(), cpu_seconds(&target));
    std::thread::sleep(Duration::from_secs(1));
    let rate = (cpu_seconds(&target) - c0) / t0.elapsed().as_secs_f64();
    assert!(rate > 0.5, "unthrottled after: {rate:.3} CPUs");
    for child in [&mut busy, &mut late] {
        child.kill().expect("stop it");
        child.wait().expect("reap it");
    }
}

/// A v1 group of the test's own, removed at the end.
struct V1Group(PathBuf);

impl V1Group {
    fn new(mount: &Path, label: &str) -> V1Group {
        let path = mount.join(format!("chaos-test-{label}-{}", std::process::id()));
        std::fs::create_dir(&path).expect("create a v1 group");
        V1Group(path)
    }

    fn name(&self, mount: &Path) -> String {
        format!("/{}", self.0.strip_prefix(mount).expect("below").display())
    }

    fn put(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join a v1 group");
    }
}

impl Drop for V1Group {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn hybrid_processes_from_several_groups_and_their_children_go_back_where_they_were() {
    if !root_or_skip() {
        return;
    }
    let Some(mount) = v1_or_skip("cpu") else {
        return;
    };
    let target = TestCgroup::new("hybrid-spread");
    let (a, b) = (V1Group::new(&mount, "a"), V1Group::new(&mount, "b"));
    let start = |script: &str| {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        target.put(&mut cmd);
        cmd.spawn().expect("start a process")
    };
    let mut p = start("exec sleep 60");
    // q forks a child 1.5 s in, once it is in the session's group.
    let mut q = start("sleep 1.5; sleep 60 & wait");
    a.put(p.id());
    b.put(q.id());
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "cpu-throttle:quota=50%",
    ]);
    let during = v1_group_name(p.id(), "cpu");
    assert!(during.contains(v1::GROUP_PREFIX), "{during}");
    assert_eq!(v1_group_name(q.id(), "cpu"), during);
    // A second session may not limit the same target.
    let (status, _, stderr) = run(chaos_user().args([
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "cpu-throttle:quota=10%",
        "--duration",
        "1s",
    ]));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("another chaos-user session already runs `cpu-throttle`"),
        "{stderr}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let child: Vec<u32> = chaos_user::cgroup::processes_below(&target.path)
        .into_iter()
        .map(|pid| pid as u32)
        .filter(|pid| ![p.id(), q.id()].contains(pid))
        .collect();
    assert_eq!(child.len(), 1, "q's child: {child:?}");
    assert_eq!(
        v1_group_name(child[0], "cpu"),
        during,
        "forked in the group"
    );
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert_eq!(v1_group_name(p.id(), "cpu"), a.name(&mount));
    assert_eq!(v1_group_name(q.id(), "cpu"), b.name(&mount));
    assert_eq!(
        v1_group_name(child[0], "cpu"),
        b.name(&mount),
        "the child goes back with its parent"
    );
    assert_eq!(v1_groups_left(&mount), Vec::<PathBuf>::new());
    // SAFETY: kill(2) on the child of q, a process this test started.
    unsafe { libc::kill(child[0] as i32, libc::SIGKILL) };
    for proc in [&mut p, &mut q] {
        proc.kill().expect("stop it");
        proc.wait().expect("reap it");
    }
}

#[test]
fn memory_limit_on_a_hybrid_layout_kills_the_command_of_run() {
    if !root_or_skip() {
        return;
    }
    let Some(mount) = v1_or_skip("memory") else {
        return;
    };
    let grow = "b = bytearray(128 << 20); print(len(b))";
    let (status, stdout, stderr) = run(chaos_user().args([
        "run",
        "--fault",
        "memory-pressure:limit=32MiB",
        "--",
        "/usr/bin/python3",
        "-c",
        grow,
    ]));
    assert_eq!(status.code(), Some(137), "OOM-killed: {stdout} {stderr}");
    assert!(stderr.contains("memory.limit_in_bytes"), "{stderr}");
    let (status, stdout, _) = run(Command::new("/usr/bin/python3").args(["-c", grow]));
    assert!(status.success(), "the same without the fault: {stdout}");
    assert_eq!(v1_groups_left(&mount), Vec::<PathBuf>::new());
    assert_eq!(undo_logs(), Vec::<String>::new());
}

#[test]
fn v1_groups_of_a_killed_injector_are_undone_by_recover() {
    if !root_or_skip() {
        return;
    }
    let (Some(cpu), Some(memory)) = (v1_or_skip("cpu"), v1_or_skip("memory")) else {
        return;
    };
    let target = TestCgroup::new("hybrid-kill");
    let mut sleeper = target.sleeper(60);
    let pid = sleeper.id();
    let before = (v1_group_name(pid, "cpu"), v1_group_name(pid, "memory"));
    let mut injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        "cpu-throttle:quota=10%",
        "--fault",
        "memory-pressure:limit=64MiB",
    ]);
    injector.signal(libc::SIGKILL);
    let (status, _) = injector.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    let memory_group = v1_group_name(pid, "memory");
    assert_ne!(memory_group, before.1, "still in the session's group");
    let limit = std::fs::read_to_string(
        memory
            .join(memory_group.trim_start_matches('/'))
            .join("memory.limit_in_bytes"),
    )
    .expect("memory.limit_in_bytes");
    assert_eq!(
        limit.trim(),
        (64 * MIB).to_string(),
        "a killed injector leaves its limit"
    );
    let (status, stdout, stderr) = run(chaos_user().arg("recover"));
    assert!(status.success(), "recover: {stdout} {stderr}");
    assert_eq!(
        (v1_group_name(pid, "cpu"), v1_group_name(pid, "memory")),
        before,
        "back where it was"
    );
    assert_eq!(v1_groups_left(&cpu), Vec::<PathBuf>::new());
    assert_eq!(v1_groups_left(&memory), Vec::<PathBuf>::new());
    assert_eq!(undo_logs(), Vec::<String>::new());
    sleeper.kill().expect("stop the sleeper");
    sleeper.wait().expect("reap the sleeper");
}

#[test]
fn io_stress_writes_from_the_cgroup_and_leaves_no_file() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = LoopFs::new("io-stress", 64) else {
        return;
    };
    let target = TestCgroup::new("target");
    let report = fs.image.with_extension("json");
    let spec = format!("io-stress:path={},workers=2,bytes=4MiB", fs.dir.display());
    let injector = Injector::start(&[
        "inject",
        "--cgroup",
        &target.name,
        "--fault",
        &spec,
        "--json",
        report.to_str().expect("UTF-8"),
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs.fill_files().len(), 2, "one file per worker");
    let (status, lines) = injector.interrupt();
    assert!(status.success(), "{lines:?}");
    assert!(fs.fill_files().is_empty(), "the files are gone");
    assert!(!target.populated(), "the workers are gone");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON");
    std::fs::remove_file(&report).expect("remove the report");
    let written = r["faults"][0]["bytes"]["injected"].as_u64().expect("count");
    println!("the workers wrote {} MiB", written / MIB);
    assert!(written >= 8 * MIB, "at least a round each: {r}");
}
