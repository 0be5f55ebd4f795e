//! Link flags of the `keelson` binary.
//!
//! `keelson cni` is exec'd once per pod and command by other runtimes, so the binary's
//! start-up is on every pod's path. As a position-independent executable, the dynamic loader
//! had to relocate all of its 800 KB of `.data.rel.ro` (vtables, static tables) at every
//! start: about 200 copy-on-write page faults and 2 ms of a 4 ms start, however compactly
//! the relocations are packed (RELR). So the binary is linked at a fixed address (`-no-pie`),
//! as Debian's reference CNI plugins, runc, kubectl and etcd are: shared libraries, heap,
//! stack and mappings stay randomized, the executable's own image does not. `KEELSON_PIE=1`
//! at build time keeps it position-independent (with packed relocations).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let pie = std::env::var("KEELSON_PIE").is_ok_and(|v| v == "1");
    if target.contains("linux-gnu") {
        if pie {
            println!("cargo:rustc-link-arg-bin=keelson=-Wl,-z,pack-relative-relocs");
        } else {
            println!("cargo:rustc-link-arg-bin=keelson=-no-pie");
        }
    }
    println!("cargo:rerun-if-env-changed=KEELSON_PIE");
    println!("cargo:rerun-if-changed=build.rs");
}
