//! Link the agent as a bare-metal image: our own linker script, no C
//! runtime, no libc, fully static, no build-id note (the ELF must carry
//! exactly one note: the PVH entry).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=agent.ld");
    println!("cargo:rerun-if-changed=src/boot.S");
    for arg in [
        format!("-T{dir}/agent.ld"),
        "-nostartfiles".into(),
        "-nostdlib".into(),
        "-static".into(),
        "-Wl,--build-id=none".into(),
        "-Wl,--no-eh-frame-hdr".into(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    // Built without .cargo/config.toml (cargo run from another directory)
    // the code would be position independent and the link would fail in
    // confusing ways: say so up front.
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags.contains("relocation-model=static") {
        panic!(
            "kiln-test-agent must be built from its own directory (tests/agent) so that \
             .cargo/config.toml applies: use tests/agent/build.sh or tests/agent/mod.rs"
        );
    }
}
