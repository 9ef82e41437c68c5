//! The block-layer probes object (see block.rs).
#![no_std]
// Atomic adds (see block.rs `atomic_add`); the eBPF crate is built with nightly anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod block;
mod runtime;
