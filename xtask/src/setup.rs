//! `cargo xtask setup`: install what building the kernel programs needs, idempotently.
//!
//! Two routes (see the project's toolchain notes):
//! - Debian-like systems: `rustc-web`, `cargo-web` and the prebuilt bpf `core` from apt, pinned to
//!   one version, plus `bpf-linker` built against apt's LLVM 22 into `.tools/`;
//! - elsewhere: rustup nightly with `rust-src` (`-Z build-std=core`) and `bpf-linker`.
//!
//! The result is recorded in `.tools/ebpf-toolchain.env`, which chaos-user's build.rs reads.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util::{self, is_root, output, root};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM: &str = "22";
const APT_TOOLCHAIN: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"];
/// Tools the demo and the tests drive, not needed to build: ping and ip, the programs the file
/// faults are tried on, and the servers of the example experiments.
const APT_TOOLS: &[&str] = &[
    "iputils-ping",
    "iproute2",
    "sqlite3",
    "python3",
    "nginx-light",
    "redis-server",
];

enum Route {
    Debian,
    Rustup,
}

/// Installs whatever is missing and writes the recipe; takes seconds when nothing is missing.
pub fn run() -> Result<()> {
    let tools = root().join(".tools");
    fs::create_dir_all(tools.join("bin"))?;
    let route = choose_route()?;
    match route {
        Route::Debian => {
            ensure_apt_toolchain()?;
            ensure_bpf_linker(&tools, &["--no-default-features", "--features", "llvm-22"])?;
        }
        Route::Rustup => ensure_bpf_linker(&tools, &[])?,
    }
    ensure_apt_tools()?;
    write_recipe(&tools, &route)?;
    eprintln!(
        "xtask: setup done ({})",
        match route {
            Route::Debian => "Debian route: apt rustc-web + bpf core, bpf-linker in .tools",
            Route::Rustup => "rustup route: nightly with rust-src, bpf-linker in .tools",
        }
    );
    Ok(())
}

fn has_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists()
}

fn choose_route() -> Result<Route> {
    if apt_toolchain_installed().is_some() {
        return Ok(Route::Debian);
    }
    if rustup_nightly_with_src() {
        return Ok(Route::Rustup);
    }
    if has_apt() {
        return Ok(Route::Debian);
    }
    bail!(
        "no way to build the eBPF programs here: this is not a Debian-like system (no apt-get), \
         and rustup has no nightly toolchain with rust-src; install one with \
         `rustup toolchain install nightly --component rust-src` and run this again"
    )
}

fn rustup_nightly_with_src() -> bool {
    output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|out| out.lines().any(|l| l.starts_with("rust-src")))
}

/// The version of the apt toolchain when all of it is installed at one version.
fn apt_toolchain_installed() -> Option<String> {
    let mut versions = Vec::new();
    for package in APT_TOOLCHAIN {
        let v =
            output(Command::new("dpkg-query").args(["-W", "-f", "${Status} ${Version}", package]))?;
        let v = v.strip_prefix("install ok installed ")?.trim().to_string();
        versions.push(v);
    }
    let llvm = format!("llvm-{LLVM}-dev");
    output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", &llvm]))
        .filter(|s| s.starts_with("install ok installed"))?;
    let first = versions[0].clone();
    versions.iter().all(|v| *v == first).then_some(first)
}

/// `apt-get ...` as root, through sudo when needed.
fn apt(args: &[&str]) -> Command {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    // Wait for another apt to finish rather than fail at once.
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args);
    cmd
}

fn apt_candidate(package: &str) -> Option<String> {
    let policy = output(Command::new("apt-cache").args(["policy", package]))?;
    let candidate = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))?;
    (candidate != "(none)").then(|| candidate.to_string())
}

fn ensure_apt_toolchain() -> Result<()> {
    if let Some(version) = apt_toolchain_installed() {
        eprintln!("xtask: apt toolchain {version} present");
        return Ok(());
    }
    eprintln!("xtask: installing the apt eBPF toolchain (about 1 GB)");
    util::run(&mut apt(&["update", "-q"]))?;
    let version = apt_candidate("rustc-web").context(
        "apt offers no rustc-web; the Debian route needs Debian 12 (bookworm) with its security \
         updates, or use rustup nightly with rust-src",
    )?;
    let bpf_version = apt_candidate("libstd-rust-web-dev-bpf");
    if bpf_version.as_deref() != Some(&version) {
        bail!(
            "apt offers rustc-web {version} but libstd-rust-web-dev-bpf {}; they must match",
            bpf_version.as_deref().unwrap_or("(none)")
        );
    }
    let mut args = vec![
        "install".to_string(),
        "-y".into(),
        "-q".into(),
        "--no-install-recommends".into(),
    ];
    args.extend(APT_TOOLCHAIN.iter().map(|p| format!("{p}={version}")));
    args.push(format!("llvm-{LLVM}-dev"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    util::run(&mut apt(&args))?;
    match apt_toolchain_installed() {
        Some(v) if v == version => Ok(()),
        other => bail!("after install the apt toolchain is {other:?}, expected {version}"),
    }
}

fn ensure_apt_tools() -> Result<()> {
    if has_apt() {
        ensure_apt_packages(APT_TOOLS)
    } else {
        Ok(())
    }
}

/// Installs the packages that are not installed yet (`apt-get update` first when needed).
pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", p]))
                .is_some_and(|s| s.starts_with("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !has_apt() {
        bail!(
            "missing packages {} and no apt-get to install them",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    if util::run(&mut apt(&args)).is_err() {
        util::run(&mut apt(&["update", "-q"]))?;
        util::run(&mut apt(&args))?;
    }
    Ok(())
}

fn ensure_bpf_linker(tools: &Path, features: &[&str]) -> Result<()> {
    let linker = tools.join("bin/bpf-linker");
    let have = output(Command::new(&linker).arg("--version"));
    if have
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} into {}",
        tools.display()
    );
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "--locked",
        "--quiet",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
    ])
    .args(features)
    .arg("--root")
    .arg(tools)
    .env_remove("RUSTUP_TOOLCHAIN");
    if !features.is_empty() {
        cmd.env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM}"));
    }
    util::run(&mut cmd)
}

fn write_recipe(tools: &Path, route: &Route) -> Result<()> {
    let linker_dir: PathBuf = tools.join("bin");
    let text = match route {
        // aya-ebpf and the programs (`chaos`) each use one unstable feature.
        Route::Debian => format!(
            "CARGO=/usr/bin/cargo\nRUSTC=/usr/bin/rustc\nRUSTC_BOOTSTRAP=aya_ebpf,chaos\n\
             LINKER_DIR={}\n",
            linker_dir.display()
        ),
        Route::Rustup => format!(
            "CARGO=cargo\nRUSTUP_TOOLCHAIN=nightly\nEXTRA_ARGS=-Z build-std=core\nLINKER_DIR={}\n",
            linker_dir.display()
        ),
    };
    let path = tools.join("ebpf-toolchain.env");
    if fs::read_to_string(&path).ok().as_deref() != Some(&text) {
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
