//! Where things live and what a results row records about the machine and the code.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

/// The project root: the nearest ancestor of the current directory with a `benchmarks/` folder.
pub fn project_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        if dir.join("benchmarks").is_dir() {
            return Ok(dir.to_path_buf());
        }
    }
    bail!(
        "no `benchmarks/` folder in {} or above: run kd from the kd-bench checkout or pass --recipes",
        cwd.display()
    )
}

/// kd-bench's own cache (teacher downloads, trained teachers, soft labels): `$KD_CACHE_DIR`, or
/// `<root>/.kd-cache`. Never the hub cache, which may be read-only.
pub fn cache_dir(root: &Path) -> PathBuf {
    std::env::var_os("KD_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| root.join(".kd-cache"))
}

/// `HF_HUB_OFFLINE=1` (or `true`): no network at all.
pub fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").map(|v| v.to_ascii_lowercase()).as_deref(),
        Ok("1") | Ok("true") | Ok("yes") | Ok("on")
    )
}

/// The commit of the code that runs: the one the binary was built from (`build.rs`), with
/// `-dirty` when tracked files differed from it. A binary built outside git falls back to the
/// checkout at `root` (empty outside git).
pub fn git_commit(root: &Path) -> String {
    match option_env!("KD_BUILD_COMMIT") {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => checkout_commit(root),
    }
}

/// `HEAD`'s commit at `root`, with `-dirty` when tracked files have changes; empty outside git.
pub fn checkout_commit(root: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(head) => {
            let dirty =
                run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}-dirty")
            } else {
                head
            }
        }
        None => String::new(),
    }
}

/// The device every model and tensor of a run is created on, from `--device`: `cpu`, `cuda` /
/// `cuda:N` (a kd built with the `cuda` feature), or `auto` (the first GPU when this kd has CUDA
/// support and a driver answers, else the CPU). The one place a device is chosen.
pub fn device(name: &str) -> anyhow::Result<candle_core::Device> {
    let name = name.trim();
    match name {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "auto" => {
            return Ok(if cuda_built() {
                candle_core::Device::new_cuda(0).unwrap_or(candle_core::Device::Cpu)
            } else {
                candle_core::Device::Cpu
            })
        }
        _ => {}
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| anyhow::anyhow!("--device `{name}`: use cpu, auto, cuda or cuda:N"))?,
        None => anyhow::bail!("--device `{name}`: use cpu, auto, cuda or cuda:N"),
    };
    if !cuda_built() {
        anyhow::bail!(
            "--device {name}: this kd was built without CUDA support; build one with `just build-cuda` \
             (scripts/build-cuda.sh, README: GPU) or use --device cpu"
        );
    }
    candle_core::Device::new_cuda(ordinal)
        .map_err(|e| anyhow::anyhow!("--device {name}: no usable CUDA device {ordinal}: {e}"))
}

/// Whether this kd was built with the `cuda` feature.
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

/// `--kernels`: which ops the models of this process run, `fast` (kd-kernels, the CPU default)
/// or `generic` (candle's ops, what a GPU runs); checked against the device (the fast kernels
/// are CPU-only). Set before any model is built.
pub fn use_kernels(kernels: Option<&str>, device_name: &str) -> anyhow::Result<()> {
    let Some(name) = kernels else { return Ok(()) };
    let k: kd_kernels::Kernels = name.parse().map_err(|e| anyhow::anyhow!("--kernels {name}: {e}"))?;
    if k == kd_kernels::Kernels::Fast && device_name.trim() != "cpu" && !device(device_name)?.is_cpu() {
        anyhow::bail!(
            "--kernels fast: the fast kernels run on the CPU only; use --kernels generic or leave it out"
        );
    }
    kd_models::layers::set_process_kernels(Some(k));
    Ok(())
}

/// Device name as the CSV records it, with the thread count on the CPU (and `-generic` when
/// the CPU runs the generic ops, whose values differ from the fast kernels' in rounding).
pub fn device_label(device: &candle_core::Device) -> String {
    match device {
        candle_core::Device::Cpu
            if kd_models::layers::process_kernels() == Some(kd_kernels::Kernels::Generic) =>
        {
            format!("cpu-{}t-generic", rayon_threads())
        }
        candle_core::Device::Cpu => format!("cpu-{}t", rayon_threads()),
        candle_core::Device::Cuda(_) => "cuda".to_string(),
        _ => "other".to_string(),
    }
}

pub fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// CPU features relevant to the kernels (for `kd bench`).
pub fn cpu_features() -> String {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
    }
    if f.is_empty() {
        "baseline".to_string()
    } else {
        f.join(",")
    }
}

/// The CPU as `lscpu` names it, e.g. `AMD EPYC (family 25 model 17)`: speeds differ between
/// machines of one kind, so every figure is printed with this. `unknown` off Linux.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| cpu_model_from(&text))
        .unwrap_or_else(|_| "unknown".into())
}

/// `cpu_model` from the text of `/proc/cpuinfo` (its first processor's entries).
pub fn cpu_model_from(cpuinfo: &str) -> String {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(name), Some(family), Some(model)) => format!("{name} (family {family} model {model})"),
        (Some(name), _, _) => name,
        _ => "unknown".into(),
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows name the code that ran even when the recipes (the `root` a run is given) lie
    /// outside any checkout. Holds for every build from a git checkout, as CI's clean clone.
    #[test]
    fn the_commit_is_the_builds_not_the_recipes_folders() {
        let outside = tempfile::tempdir().unwrap();
        let commit = git_commit(outside.path());
        let head = checkout_commit(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert_eq!(commit.len(), 40 + if commit.ends_with("-dirty") { 6 } else { 0 }, "{commit:?}");
        assert_eq!(&commit[..40], &head[..40], "built from HEAD");
    }

    #[test]
    fn cpu_model_names_the_first_processor() {
        let two = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n\n\
                   processor\t: 1\ncpu family\t: 6\nmodel\t\t: 167\nmodel name\t: Intel Xeon\n";
        assert_eq!(cpu_model_from(two), "AMD EPYC (family 25 model 17)");
        assert_eq!(cpu_model_from("model name : Apple M2\n"), "Apple M2");
        assert_eq!(cpu_model_from("Hardware : x\n"), "unknown");
    }

    #[test]
    fn device_names() {
        assert!(device("cpu").unwrap().is_cpu());
        assert!(device(" cpu ").unwrap().is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda1", "CPU"] {
            let e = device(bad).unwrap_err().to_string();
            assert!(e.contains("use cpu, auto, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_cuda_support_cuda_is_refused_and_auto_is_the_cpu() {
        assert!(!cuda_built());
        assert!(device("auto").unwrap().is_cpu());
        for name in ["cuda", "cuda:1"] {
            let e = device(name).unwrap_err().to_string();
            assert!(e.contains("built without CUDA support") && e.contains("just build-cuda"), "{e}");
        }
    }
}
