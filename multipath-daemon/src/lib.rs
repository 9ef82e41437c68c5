//! mpathd: a multipath daemon that watches every storage path from inside the kernel.
//!
//! Data flows one way: kernel event -> path -> map -> decision -> device-mapper. Each
//! stage is a module with a narrow, typed interface; only [`ebpf`] talks to aya.

pub mod actions;
pub mod checker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dm;
pub mod ebpf;
pub mod health;
pub mod logging;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod sockdiag;
pub mod topology;
