//! A BPF array map (created with `BPF_F_MMAPABLE`) read and written through a shared
//! mapping: the stall scan reads every watched path's per-CPU entries every few tens of
//! milliseconds, which through the map syscalls would cost one syscall per path and scan.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;

use super::EbpfError;

/// `T` is one of the plain `repr(C)` integer structs of `multipath_common::block`.
pub(crate) struct MappedArray<T> {
    ptr: *mut T,
    entries: usize,
    len: usize,
    /// Owns the map's fd; the mapping keeps the map alive too, but the fd names it.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory owned by this value; the kernel writes to it
// concurrently, which every access here tolerates (volatile, per field).
unsafe impl<T> Send for MappedArray<T> {}

impl<T: Copy> MappedArray<T> {
    /// Maps `entries` elements of `map` (named `name` in errors).
    pub(crate) fn new(map: MapData, entries: u32, name: &'static str) -> Result<Self, EbpfError> {
        // The kernel rounds each element up to 8 bytes; our types are multiples of 8.
        assert_eq!(std::mem::size_of::<T>() % 8, 0, "{name}: element size");
        let page = page_size();
        let bytes = std::mem::size_of::<T>() * entries as usize;
        let len = bytes.div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(EbpfError::Mmap {
                map: name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            ptr: ptr.cast(),
            entries: entries as usize,
            len,
            _map: map,
        })
    }

    /// Pointer to element `i`. Panics when out of range: every index here is computed
    /// from sizes this module chose.
    pub(crate) fn at(&self, i: usize) -> *mut T {
        assert!(i < self.entries, "index {i} of {} entries", self.entries);
        // SAFETY: in range of the mapping.
        unsafe { self.ptr.add(i) }
    }

    /// A copy of element `i`, read while the kernel may be writing it: each aligned
    /// integer field is read whole, but the element as a whole is not a snapshot.
    pub(crate) fn read(&self, i: usize) -> T {
        // SAFETY: in range, aligned (page-aligned base, element size a multiple of 8).
        unsafe { std::ptr::read_volatile(self.at(i)) }
    }

    pub(crate) fn write(&self, i: usize, v: T) {
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile(self.at(i), v) }
    }
}

impl<T> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}
