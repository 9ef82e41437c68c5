//! Builds the eBPF programs (multipath-ebpf) for bpfel-unknown-none with nightly and
//! bpf-linker, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask` installs the toolchain pieces this needs before it builds.

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "multipath-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../multipath-ebpf"),
        ..Default::default()
    };
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../multipath-common/src")
    );
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             They need the nightly toolchain with rust-src and bpf-linker 0.10.x; \
             `cargo xtask test` (or `cargo xtask bootstrap`) installs both."
        )
    })
}
