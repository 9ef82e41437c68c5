//! The iSCSI TCP probes object (see tcp.rs).
#![no_std]
#![no_main]

mod runtime;
mod tcp;
