//! `kd`: reproduce knowledge-distillation experiments from their recipes and inspect results.

use kd_analysis::{cite, compare, report};
use kd_cli::cli::{Cli, Command};
use kd_cli::{bench, eval, list, reproduce, sweep};

use anyhow::Result;
use clap::Parser;

// The kernels allocate large temporaries every step; glibc's malloc turns each into an
// mmap/munmap pair (PERF-NOTES). mimalloc keeps them in-process (see `allocator`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `kd list | head` closes the pipe early: end quietly, as other command-line tools do, instead
/// of panicking in `println!` (Rust ignores SIGPIPE by default).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> Result<()> {
    default_sigpipe();
    kd_cli::allocator::keep_freed_memory();
    kd_cli::threads::limit_candle_spinning();
    kd_run::progress::install(Box::new(kd_cli::progress::Bars));
    let cli = Cli::parse();
    match cli.command {
        Command::Reproduce(args) => reproduce::run(args),
        Command::List { recipes, hashes } => list::run(recipes, hashes),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Report(args) => report::run(args),
        Command::Cite(args) => cite::run(args),
        Command::Sweep(args) => sweep::run(args),
    }
}
