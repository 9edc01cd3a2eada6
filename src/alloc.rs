//! The process's memory allocator: jemalloc, built with unprefixed symbols
//! so that its `malloc` and `free` replace the C library's for the whole
//! process, librdkafka's included. Most of a drain's allocations are
//! librdkafka's: a copy of every record produced, its header blocks, the
//! delivery reports, freed hundreds at a time; glibc's allocator spent a
//! fifth of the pipeline thread on them (BENCHMARKS.md, "Tuning").
//!
//! Declared here, once, as the global allocator of every binary that links
//! this library with the default `jemalloc` feature (`bouncer`, the
//! end-to-end bench's baseline, the tests): its unprefixed `malloc` is
//! theirs anyway. Builds that bring their own allocator, such as the fuzz
//! targets' sanitizer, turn the feature off.

#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Makes sure jemalloc returns freed memory on time, and says how it is
/// set up, for the log. The repository's `.cargo/config.toml` builds
/// jemalloc's defaults into the binary: two arenas and one background
/// thread, which returns freed pages to the system even while the process
/// is idle (without it, unused pages are purged only when the process
/// allocates again). A binary built without that file gets the background
/// thread here, unless `MALLOC_CONF` is set: then jemalloc is configured by
/// the operator. Call early in `main`, before the pipeline starts. An error
/// only if jemalloc refused (the process runs on regardless).
pub fn configure() -> Result<String, String> {
    #[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
    {
        use tikv_jemalloc_ctl::{background_thread, max_background_threads, opt};
        let by_operator = std::env::var_os("MALLOC_CONF").is_some();
        let mut running = background_thread::read().map_err(|e| e.to_string())?;
        if !running && !by_operator {
            max_background_threads::write(1)
                .and_then(|()| background_thread::write(true))
                .map_err(|e| format!("cannot start jemalloc's background thread: {e}"))?;
            running = true;
        }
        // The arenas that threads are spread over (jemalloc keeps one more
        // for allocations of 8 MiB and over).
        let arenas = opt::narenas::read().map_err(|e| e.to_string())?;
        let purging = if running {
            "a background thread"
        } else {
            "no background thread"
        };
        let source = if by_operator { ", MALLOC_CONF set" } else { "" };
        Ok(format!("jemalloc, {arenas} arenas, {purging}{source}"))
    }
    #[cfg(not(all(feature = "jemalloc", target_os = "linux", target_env = "gnu")))]
    Ok("the system allocator".to_owned())
}
