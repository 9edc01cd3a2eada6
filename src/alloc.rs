//! The process's memory allocator: jemalloc, built with unprefixed symbols
//! so that its `malloc` and `free` replace the C library's for the whole
//! process, librdkafka's included. Most of a drain's allocations are
//! librdkafka's: a copy of every record produced, its header blocks, the
//! delivery reports, freed hundreds at a time; glibc's allocator spent a
//! fifth of the pipeline thread on them (BENCHMARKS.md, "Tuning").
//!
//! The binaries (`bouncer`, the end-to-end bench's baseline) declare it as
//! their global allocator under the default `jemalloc` feature; builds that
//! bring their own allocator, such as the fuzz targets' sanitizer, turn the
//! feature off.

#[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
pub use tikv_jemallocator::Jemalloc;

/// Turns on one jemalloc background thread, which returns freed memory to
/// the system on time even while the process is idle (without it, unused
/// pages are purged only when the process allocates again). Left alone when
/// `MALLOC_CONF` is set: then jemalloc is configured by the operator (the
/// container image sets it, to also cap the arenas; see the Dockerfile).
/// Call early in `main`, before the pipeline starts; jemalloc starts the
/// thread whenever it is called. Returns what was done, for the log; an
/// error only if jemalloc refused (the process runs on regardless).
pub fn configure() -> Result<&'static str, String> {
    #[cfg(all(feature = "jemalloc", target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_CONF").is_some() {
            return Ok("jemalloc, configured by MALLOC_CONF");
        }
        tikv_jemalloc_ctl::max_background_threads::write(1)
            .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true))
            .map_err(|e| format!("cannot start jemalloc's background thread: {e}"))?;
        Ok("jemalloc with a background thread")
    }
    #[cfg(not(all(feature = "jemalloc", target_os = "linux", target_env = "gnu")))]
    Ok("the system allocator")
}
