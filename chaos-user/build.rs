//! Builds the kernel programs (`chaos-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR` for `include_bytes_aligned!`.
//!
//! The toolchain is the one `cargo xtask setup` recorded in `.tools/ebpf-toolchain.env`. When it
//! has not been set up yet the object is left empty, so that `cargo check` and clippy of the host
//! crates work on any machine, and the binary refuses to run, naming the set-up command.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("chaos-user lives in the workspace")
        .to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("chaos.bpf.o");
    let recipe = root.join(".tools/ebpf-toolchain.env");

    println!("cargo:rerun-if-changed={}", recipe.display());
    for watched in [
        "chaos-ebpf/src",
        "chaos-ebpf/Cargo.toml",
        "chaos-ebpf/Cargo.lock",
        "chaos-common",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let Ok(text) = fs::read_to_string(&recipe) else {
        println!(
            "cargo:warning=eBPF toolchain not set up: this chaos-user will carry no programs \
             and refuse to run; run `cargo xtask setup`"
        );
        fs::write(&out, b"").expect("write the empty object");
        return;
    };
    let object = build_ebpf(&root, &text);
    fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
}

fn build_ebpf(root: &Path, recipe: &str) -> PathBuf {
    let get = |key: &str| {
        recipe
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let cargo = get("CARGO").expect("CARGO in .tools/ebpf-toolchain.env");
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new(&cargo);
    // The outer cargo's variables describe the host build; none of them may leak in.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let path = env::var("PATH").unwrap_or_default();
    let linker_dir = get("LINKER_DIR").unwrap_or_default();
    cmd.env("PATH", format!("{linker_dir}:{path}"));
    let flags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    if let Some(rustc) = get("RUSTC") {
        cmd.env("RUSTC", rustc);
    }
    if let Some(toolchain) = get("RUSTUP_TOOLCHAIN") {
        cmd.env("RUSTUP_TOOLCHAIN", toolchain);
    }
    // aya-ebpf and the programs (`chaos`, for BPF's atomic fetch-add in inline assembly) each
    // use one unstable feature; allow them for those two crates alone.
    let mut bootstrap = get("RUSTC_BOOTSTRAP").unwrap_or_else(|| "aya_ebpf".into());
    if !bootstrap.split(',').any(|c| c == "chaos" || c == "1") {
        bootstrap.push_str(",chaos");
    }
    cmd.env("RUSTC_BOOTSTRAP", bootstrap);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "bpfel-unknown-none",
    ])
    .arg("--manifest-path")
    .arg(root.join("chaos-ebpf/Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir);
    if let Some(extra) = get("EXTRA_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run {cargo} for the eBPF build: {e}"));
    assert!(
        status.success(),
        "the eBPF build failed ({status}); see the output above"
    );
    target_dir.join("bpfel-unknown-none/release/chaos")
}
