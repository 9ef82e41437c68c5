//! The block-layer probes object (see block.rs).
#![no_std]
#![no_main]

mod block;
mod runtime;
