//! How the process asks glibc's allocator to give memory back.
//!
//! amfp allocates a few large buffers per part (the decoded frame as f32, its resampled copy,
//! the part mask and its integral image: several MB each for a whole-part scan) and frees them
//! when the part is judged. glibc serves allocations above its mmap threshold with their own
//! mappings, returned to the kernel on free, but it *raises* that threshold to the size of every
//! mapped block freed (up to 32 MB), so after the first part every frame buffer comes from the
//! heap, whose freed space glibc keeps. The daemon's resident memory then climbs with the largest
//! parts it has seen: `amfp run` over 25 simulated scans peaked at 120 MiB this way, 91 MiB with
//! a fixed 1 MiB threshold and 87 MiB with two arenas as well (BENCHMARKS.md). A fixed
//! threshold of 1 MiB keeps tract's tensors for one ROI (at most 0.6 MB for the shipped model's
//! per-ROI plan) on the heap, so inference does not pay for mapping pages on every call (a
//! 256 KiB threshold did, measurably).
//!
//! Only `amfp run` does this. Mapping a frame's buffers afresh for every part costs page faults:
//! about 3 ms more PNG decoding per part (13 against 10 ms, measured side by side on the bench's
//! 25 parts), which a long-running service on a small board pays gladly for memory that stays
//! bounded, and a one-shot `amfp identify` over a batch of files has no reason to.
//!
//! Environment variables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) set by the user win:
//! glibc reads them before `main`, and [`tune_allocator`] leaves a setting alone when its
//! variable is present.

/// Allocations from this size up get their own mapping, returned to the kernel when freed.
pub const MMAP_THRESHOLD: usize = 1 << 20;
/// Heap arenas: two cores' worth of threads share them (glibc's default is 8 per core).
pub const ARENA_MAX: usize = 2;

/// Applies [`MMAP_THRESHOLD`] and [`ARENA_MAX`] on glibc (no-op elsewhere). Call before any
/// thread starts. Returns whether glibc accepted both.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut ok = true;
        // SAFETY: mallopt only changes allocator parameters; it is called before other threads.
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            ok &= unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) } == 1;
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            ok &= unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX as libc::c_int) } == 1;
        }
        ok
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_accepts_the_settings() {
        assert!(tune_allocator());
    }
}
