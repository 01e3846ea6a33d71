//! Builds the libfabric shim when the `ofi` feature is on (see
//! `src/fabric/ofi_shim.c`); nothing otherwise.

fn main() {
    println!("cargo:rerun-if-changed=src/fabric/ofi_shim.c");
    #[cfg(feature = "ofi")]
    {
        cc::Build::new()
            .file("src/fabric/ofi_shim.c")
            .warnings(true)
            .compile("lumen_ofi_shim");
        println!("cargo:rustc-link-lib=fabric");
    }
}
