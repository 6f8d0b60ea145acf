//! Writes the CRDs into `manifests/crds/` (or the directory given), one file per kind, and a
//! kustomization listing them.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds"));
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in gaia_k8s::crds::all() {
        std::fs::write(dir.join(file), gaia_k8s::crds::render(&crd)?)?;
        println!("wrote {}", dir.join(file).display());
    }
    std::fs::write(dir.join("kustomization.yaml"), gaia_k8s::crds::kustomization())?;
    Ok(())
}
