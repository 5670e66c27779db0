//! Each benchmark runs with the allocator of the binary it stands in for: the relay's code with
//! mimalloc (as `tributary-relay`), the operator's with the system allocator (as
//! `tributary-operator`), since peak RSS and CPU time depend on it. A process picks one at its
//! first allocation, from `TRIBUTARY_BENCH_ALLOCATOR`, and keeps it; a benchmark started under the
//! other one runs this binary again with the variable set.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::Context as _;
use mimalloc::MiMalloc;

const ENV: &str = "TRIBUTARY_BENCH_ALLOCATOR";
const ENV_C: &CStr = c"TRIBUTARY_BENCH_ALLOCATOR";
const MIMALLOC: &str = "mimalloc";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    System,
    Mimalloc,
}

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MI: u8 = 2;

static CHOSEN: AtomicU8 = AtomicU8::new(UNDECIDED);

impl Allocator {
    /// The one this process allocates with.
    pub fn current() -> Allocator {
        match CHOSEN.load(Ordering::Relaxed) {
            SYSTEM => Allocator::System,
            MI => Allocator::Mimalloc,
            _ => {
                // SAFETY: getenv allocates nothing (the allocator cannot allocate to decide) and
                // runs before any thread of this program could change the environment. Threads
                // racing here read the same variable, so they decide the same.
                let value = unsafe { libc::getenv(ENV_C.as_ptr()) };
                // SAFETY: a non-null getenv result is a NUL-terminated string.
                let mimalloc = !value.is_null() && unsafe { CStr::from_ptr(value) }.to_bytes() == MIMALLOC.as_bytes();
                let chosen = if mimalloc { Allocator::Mimalloc } else { Allocator::System };
                CHOSEN.store(if mimalloc { MI } else { SYSTEM }, Ordering::Relaxed);
                chosen
            }
        }
    }

    /// Runs this binary again, with the same arguments, under `self`; its exit code.
    pub fn run_again_under(self) -> anyhow::Result<ExitCode> {
        // Set, yet not honoured: running again would end up here again.
        anyhow::ensure!(std::env::var_os(ENV).is_none(), "{ENV} is set; this benchmark needs {self:?}: unset it");
        let binary = std::env::current_exe().context("cannot find this binary")?;
        let status = Command::new(&binary)
            .args(std::env::args_os().skip(1))
            .env(ENV, if self == Allocator::Mimalloc { MIMALLOC } else { "system" })
            .status()
            .with_context(|| format!("cannot run {} again", binary.display()))?;
        // Killed by a signal: no code of its own.
        Ok(status.code().and_then(|code| u8::try_from(code).ok()).map_or(ExitCode::FAILURE, ExitCode::from))
    }
}

/// The global allocator: every call goes to the one [`Allocator::current`] names.
pub struct PerProcess;

// SAFETY: every call is forwarded unchanged to one allocator, the same for the whole process, so
// memory is always freed or resized by the allocator that allocated it.
unsafe impl GlobalAlloc for PerProcess {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match Allocator::current() {
                Allocator::System => System.alloc(layout),
                Allocator::Mimalloc => MiMalloc.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match Allocator::current() {
                Allocator::System => System.alloc_zeroed(layout),
                Allocator::Mimalloc => MiMalloc.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match Allocator::current() {
                Allocator::System => System.dealloc(ptr, layout),
                Allocator::Mimalloc => MiMalloc.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match Allocator::current() {
                Allocator::System => System.realloc(ptr, layout, new_size),
                Allocator::Mimalloc => MiMalloc.realloc(ptr, layout, new_size),
            }
        }
    }
}
