//! `directio`: one O_DIRECT read of the first logical block, as multipath-tools' directio
//! checker does. It works on any block device and exercises the whole IO path (queue,
//! transport, target), not just the SCSI command set: a path that answers TUR but cannot
//! move data is down here.

use std::{os::fd::AsRawFd, os::unix::fs::FileExt, path::Path, time::Duration};

use super::{CheckOutcome, Checker, CheckerKind, not_a_block_device, open_failed, open_node};

pub struct Directio;

/// Largest logical block size we accept from BLKSSZGET; anything above is not a real
/// block device answer.
const MAX_BLOCK: usize = 64 * 1024;

impl Checker for Directio {
    fn kind(&self) -> CheckerKind {
        CheckerKind::Directio
    }

    /// Blocks for as long as the read takes: a read has no timeout of its own, so the
    /// pool's timer is what bounds it for the caller.
    fn check(&self, node: &Path, _timeout: Duration) -> CheckOutcome {
        if let Some(out) = not_a_block_device(node) {
            return out;
        }
        let f = match open_node(node, libc::O_DIRECT) {
            Ok(f) => f,
            Err(e) => return open_failed(node, &e),
        };
        let mut lbs: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::BLKSSZGET, &mut lbs) } < 0 {
            let e = std::io::Error::last_os_error();
            return CheckOutcome::Unsupported {
                why: format!(
                    "{} gives no logical block size (BLKSSZGET: {e}); is it a block device?",
                    node.display()
                ),
            };
        }
        let lbs = lbs as usize;
        if !(512..=MAX_BLOCK).contains(&lbs) || !lbs.is_power_of_two() {
            return CheckOutcome::Unsupported {
                why: format!(
                    "logical block size {lbs} of {} is not usable",
                    node.display()
                ),
            };
        }
        let mut buf = AlignedBlock::new(lbs);
        match f.read_at(buf.as_mut(), 0) {
            Ok(n) if n == lbs => CheckOutcome::Up,
            // The LUN answered: with an error it may give on every path.
            Ok(n) => CheckOutcome::Down {
                why: format!("read of block 0: {n} of {lbs} bytes"),
                ambiguous: true,
            },
            Err(e) => CheckOutcome::Down {
                why: format!("read of block 0: {e}"),
                ambiguous: true,
            },
        }
    }
}

/// One block, aligned to the page so O_DIRECT takes it whatever the device's alignment.
struct AlignedBlock {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBlock {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096.max(len)).expect("block layout");
        // SAFETY: non-zero size (len >= 512).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: we own layout.size() initialised bytes at ptr.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_node_is_down_and_says_which() {
        let out = Directio.check(
            Path::new("/dev/mpathd-no-such-disk"),
            Duration::from_secs(1),
        );
        let CheckOutcome::Down { why, .. } = out else {
            panic!("expected Down, got {out:?}")
        };
        assert!(
            why.starts_with("/dev/mpathd-no-such-disk: No such file"),
            "{why}"
        );
    }

    #[test]
    fn a_regular_file_is_unsupported() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let out = Directio.check(&file, Duration::from_secs(1));
        let CheckOutcome::Unsupported { why } = out else {
            panic!("expected Unsupported, got {out:?}")
        };
        assert_eq!(why, format!("{} is not a block device", file.display()));
    }

    #[test]
    fn blocks_are_aligned_for_o_direct() {
        for len in [512, 4096, 65536] {
            let mut b = AlignedBlock::new(len);
            assert_eq!(b.as_mut().len(), len);
            assert_eq!(b.as_mut().as_ptr() as usize % 4096, 0);
        }
    }
}
