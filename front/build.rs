//! Link the `vpcnet` binary without libc: no crt objects (`_start` is ours), no default
//! libraries, static, not position-independent. Only for bins, so the library's tests link
//! normally with std.

fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
