//! Shared by mpathd's eBPF objects: each bin target (`multipath-block`, `multipath-tcp`)
//! includes this for its panic handler and licence, so each object carries only its own
//! programs and maps.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL: the programs call GPL-only helpers (bpf_probe_read_kernel, bpf_ktime_get_ns).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
