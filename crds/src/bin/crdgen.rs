//! `crdgen`: writes the CustomResourceDefinitions to `crds/` and `charts/dapr/crds/` (or
//! checks them with `--check`, exiting 1 when they differ from the types).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dirs = [root.join("crds"), root.join("charts/dapr/crds")];
    match run(&dirs, check) {
        Ok(stale) if stale.is_empty() => ExitCode::SUCCESS,
        Ok(stale) => {
            for path in stale {
                eprintln!("out of date: {}", path.display());
            }
            eprintln!("run `cargo run -p dapr-crds --bin crdgen` to regenerate");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes (or, with `check`, compares) every definition in each of `dirs`; returns the stale
/// files.
fn run(dirs: &[PathBuf], check: bool) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut stale = Vec::new();
    for crd in dapr_crds::crd::all()? {
        let text = dapr_crds::crd::to_yaml(&crd)?;
        for dir in dirs {
            let path = dir.join(dapr_crds::crd::file_name(&crd));
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == text {
                continue;
            }
            if check {
                stale.push(path);
            } else {
                std::fs::create_dir_all(dir)?;
                std::fs::write(&path, &text)?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(stale)
}
