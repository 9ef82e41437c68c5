//! Types shared by mpathd's eBPF programs and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree byte for byte;
//! flags are `u32`, never `bool`. With the `user` feature the types also implement
//! `aya::Pod`, which the daemon needs to read them out of maps.
#![no_std]

pub mod block;
pub mod tcp;
