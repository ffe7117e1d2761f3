//! The build sums every matmul in the same order on every x86-64 machine (docs/performance.md,
//! "Cross-machine determinism"): gemm's depth blocking does not follow the machine's L1 cache,
//! and its AVX-512 (`x86-v4`) kernels run only the products whose sums do not depend on the
//! vector width (vendor/README.md; `gemm_summation_order.rs` checks the sums themselves). Both
//! need the patched gemm-common in vendor/. The causes were found when the pinned smoke rows
//! failed on a 48 KiB-L1 AVX-512 machine; `kd-cli/tests/smoke_pins.rs` is the end-to-end check.

use std::process::Command;

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc).arg("-vV").output().expect("running rustc -vV");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("no `host:` line in rustc -vV: {text}"))
        .trim()
        .to_string()
}

/// `(name, enabled features, source)` of every resolved package called `name`, in the build
/// for this host. `--filter-platform` matters offline: without it cargo needs the manifests of
/// other platforms' dependencies (e.g. `android_system_properties`), which a clean machine's
/// registry cache does not hold, since `cargo build` fetches only the host's.
fn resolved(name: &str) -> Vec<(Vec<String>, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let host = host_triple();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host])
        .args(["--manifest-path", manifest])
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let source_of = |id: &str| {
        packages
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["source"].as_str().unwrap_or("path").to_string())
            .unwrap_or_default()
    };
    meta["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .filter(|n| packages.iter().any(|p| p["id"] == n["id"] && p["name"] == name))
        .map(|n| {
            let features =
                n["features"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).map(str::to_string);
            (features.collect(), source_of(n["id"].as_str().unwrap_or_default()))
        })
        .collect()
}

#[test]
fn gemm_depth_blocking_does_not_follow_the_machine() {
    let common = resolved("gemm-common");
    assert!(
        common.iter().all(|(_, source)| source == "path"),
        "gemm-common must be the patched copy in vendor/ (sources {common:?})"
    );
    // gemm's f32 AVX2 kernel is 16 × 6: `kc` 512 for every depth above it, whatever the L1
    // (a 48 KiB 12-way L1 made it 1024 before the patch), and evenly split below a multiple.
    for (m, n, k, kc) in
        [(64, 576, 16384, 512), (128, 128, 4096, 512), (576, 64, 1536, 512), (2048, 384, 384, 384)]
    {
        let p = gemm_common::cache::kernel_params(m, n, k, 16, 6, 4);
        assert_eq!(p.kc, kc, "kc of a {m}×{k} · {k}×{n} f32 product");
    }
}
