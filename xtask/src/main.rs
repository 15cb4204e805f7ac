//! Developer tasks: `cargo xtask setup | build | test | fuzz | demo | bench | vm`.
#![allow(
    clippy::print_stdout,
    reason = "a command-line tool: its output is the point"
)]

mod bench;
mod demo;
mod fuzz;
mod privileged;
mod setup;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set-up, build, test and demo of chaos-user"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the kernel programs needs (idempotent; seconds when nothing is
    /// missing).
    Setup,
    /// Set up, then build chaos-user with its programs.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, lint, run the unit tests and then the privileged tests as root.
    Test {
        /// Also run the long forms of the tests.
        #[arg(long)]
        long: bool,
        /// Run only privileged tests whose name contains this text (repeatable).
        #[arg(long = "filter", value_name = "TEXT")]
        filters: Vec<String>,
        /// Skip the guest kernel (the VM lane).
        #[arg(long, conflicts_with = "guest_only")]
        no_guest: bool,
        /// Run the privileged tests only in the guest kernel.
        #[arg(long)]
        guest_only: bool,
    },
    /// Fuzz the fault spec grammar and the scenario parser (cargo fuzz, from the corpus in
    /// fuzz/corpus); `test` runs this too, bounded.
    Fuzz {
        /// Inputs per target.
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
    },
    /// Set up, build, and show loss on a real workload in a fresh cgroup next to the same
    /// workload outside it.
    Demo,
    /// Set up, build (release), and measure what the injector costs, how exact it is and how
    /// fast it reacts, next to no injector and to iptables; writes bench/RESULTS.md and
    /// bench/results.json.
    Bench {
        /// Fewer and shorter rounds: checks that the bench runs; its figures are not for keeping.
        #[arg(long)]
        quick: bool,
        /// Leave out the figures of the VM lane (the `file` hooks, `delay` against netem).
        #[arg(long)]
        no_guest: bool,
    },
    /// The bench, once built and as root (used by `bench` through sudo).
    #[command(hide = true)]
    BenchAsRoot {
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        no_guest: bool,
    },
    /// The bench's part in the VM lane's guest: writes its figures to OUT.
    #[command(hide = true)]
    BenchGuest {
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        quick: bool,
    },
    /// A workload of the bench, run inside the target cgroup.
    #[command(hide = true)]
    BenchLoad {
        #[arg(num_args = 1.., allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command as root in a guest booting Debian's packaged kernel (the VM lane). Exits
    /// with the command's status, or 124 when the guest timed out, 125 when it broke, 130 when
    /// interrupted.
    Vm(vm::Args),
    /// Runs privileged test binaries as root, each test in its own cgroup (used by `test`).
    #[command(hide = true)]
    Privileged(privileged::Args),
    /// The demo, once built and as root (used by `demo` through sudo).
    #[command(hide = true)]
    DemoAsRoot,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run().map(|_| 0),
        Task::Build { release } => setup::run()
            .and_then(|_| util::build_chaos_user(release))
            .map(|_| 0),
        Task::Test {
            long,
            filters,
            no_guest,
            guest_only,
        } => test::run(test::Options {
            long,
            filters,
            host: !guest_only,
            guest: !no_guest,
        }),
        Task::Demo => demo::run(),
        Task::Fuzz { runs } => fuzz::run(runs).map(|failed| i32::from(!failed.is_empty())),
        Task::Bench { quick, no_guest } => bench::run(bench::Options { quick, no_guest }),
        Task::BenchAsRoot { quick, no_guest } => bench::as_root(
            &util::root().join("target/release/chaos-user"),
            bench::Options { quick, no_guest },
        ),
        Task::BenchLoad { args } => bench::load(&args),
        Task::BenchGuest { out, quick } => bench::in_guest(&out, quick),
        Task::Privileged(args) => privileged::run(args),
        Task::Vm(args) => vm::run(args),
        Task::DemoAsRoot => demo::demo_as_root(&util::root().join("target/debug/chaos-user")),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            let status = e
                .downcast_ref::<vm::GuestError>()
                .map_or(1, vm::GuestError::exit_status);
            std::process::exit(status);
        }
    }
}
