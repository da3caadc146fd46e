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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "dhat-heap")]
    let _heap_profile = dhat::Profiler::new_heap();
    clima::run().await
}
