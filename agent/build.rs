//! Link options of `vpcnetd` (issue 10, agent RSS).
//!
//! `-z pack-relative-relocs` (DT_RELR): vpcnetd is a position-independent executable with
//! ~32 000 relative relocations (the addresses in its `.data.rel.ro`: vtables, string tables).
//! As `Elf64_Rela` records they are a 770 KiB `.rela.dyn` that the dynamic loader reads in
//! full at every start — resident pages of every agent for nothing after that. Packed as
//! DT_RELR bitmaps they take a few KiB. Needs glibc >= 2.36 at run time (the image's Debian
//! bookworm has 2.36) and GNU ld >= 2.38 or lld >= 15 at link time; set
//! `VPCNET_NO_PACK_RELOCS=1` to link without it on an older toolchain.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=VPCNET_NO_PACK_RELOCS");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu && std::env::var_os("VPCNET_NO_PACK_RELOCS").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
