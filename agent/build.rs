//! Link flags of the `keelson` binary.
//!
//! `keelson cni` is exec'd once per pod by other runtimes, so the binary's start-up is on
//! every pod's path. It is a position-independent executable (ASLR stays on) with tens of
//! thousands of relative relocations; packing them as RELR (glibc 2.36, binutils 2.38) makes
//! the dynamic loader's work and the copy-on-write faults it causes a fraction of what
//! REL/RELA tables cost.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux-gnu") {
        println!("cargo:rustc-link-arg-bin=keelson=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
