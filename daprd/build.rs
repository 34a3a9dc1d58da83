//! Release builds of `daprd` hand lld `symbol-order.txt`, the functions a sidecar runs (start-up
//! first, then the request path), so that they sit together in the binary instead of spread over
//! all of its text: an idle sidecar's memory is mostly the code pages start-up touched, and this
//! takes it from about 12.3 to 8.3 MiB (bench/notes.md, "functions placed in the order they
//! run"; bench/symbol-order.sh writes the file). Only where rustc links with its own lld by
//! default (x86_64 Linux); names the build no longer has are skipped. `DAPRD_SYMBOL_ORDER=off`
//! turns it off, e.g. for a linker other than lld.

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=DAPRD_SYMBOL_ORDER");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let wanted = env("PROFILE") == "release"
        && env("TARGET") == "x86_64-unknown-linux-gnu"
        && env("DAPRD_SYMBOL_ORDER") != "off";
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if wanted && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=daprd=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=daprd=-Wl,--no-warn-symbol-ordering");
    }
}
