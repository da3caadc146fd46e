//! The `clima` binary: the allocator, then [`clima::run`].

/// mimalloc: per-request allocations were a sixth of the API's CPU time with
/// glibc's malloc (perf, ci/bench), and it returns memory to the system sooner.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--features dhat-heap`: a heap profile of the process instead, written to
/// `dhat-heap.json` when it exits (what holds the memory at its peak, by call
/// site; ARCHITECTURE.md, "Where a request's time goes").
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// mimalloc's `mi_option_purge_delay`: just below `mi_option_use_numa_nodes`
/// in both its v2 and v3 headers (the crate names only the latter).
#[cfg(not(feature = "dhat-heap"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

fn main() -> anyhow::Result<()> {
    // Before the runtime starts any thread (mimalloc's options are plain values).
    #[cfg(not(feature = "dhat-heap"))]
    return_freed_memory_at_once();
    #[cfg(feature = "dhat-heap")]
    let _heap_profile = dhat::Profiler::new_heap();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(clima::run())
}

/// Memory freed after a burst goes back to the system at once, not a second
/// later (mimalloc v3's default; v2's is 10 ms): a burst of large bodies then
/// costs the API less peak RSS (the valid tweets of ci/bench-memory: 3.22 x
/// the bytes in flight, 2.61 x with this), and 1,024 closed connections leave
/// 37.5 MiB, not 58.6. A closed loop of 40,000 tweets ran as fast either way.
/// `MIMALLOC_PURGE_DELAY` (or its old name `MIMALLOC_RESET_DELAY`) still decides where set.
#[cfg(not(feature = "dhat-heap"))]
fn return_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_RESET_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options while this process has one
        // thread; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

#[cfg(all(test, not(feature = "dhat-heap")))]
mod tests {
    /// The option set at start is mimalloc's purge delay: in this process, which
    /// never set it, it holds its default (1,000 ms in v3, 10 ms in v2), which
    /// neither neighbouring option has.
    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_at_start_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one of mimalloc's options.
        let (delay, before, after) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY - 1),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY + 1),
            )
        };
        let default = |value| value == 1000 || value == 10;
        assert_eq!((default(delay), default(before), default(after)), (true, false, false), "{delay}");
    }
}
