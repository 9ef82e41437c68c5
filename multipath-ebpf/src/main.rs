//! mpathd's in-kernel probes.
//!
//! Each entry point is a thin wrapper around a `try_*` function; maps are the uppercase
//! statics. The daemon fills the tracepoint field offsets in before loading, so one object
//! works on every kernel whose tracefs `format` files it has read.
#![no_std]
#![no_main]

mod block;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
