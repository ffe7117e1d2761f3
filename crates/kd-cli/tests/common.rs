//! Helpers shared by the CLI integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A data folder: `$var`, else `<repo>/../shared/data/<default>` (the documented layout). Test
/// binaries run in their crate's folder, so a relative value is taken from the repository root,
/// where the README's test command is typed.
pub fn data_dir(var: &str, default: &str) -> PathBuf {
    let dir = match std::env::var_os(var).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("../shared/data").join(default),
    };
    dir.canonicalize().unwrap_or(dir)
}

/// The shared hub cache (`$HF_HOME`, see [`data_dir`]) holding each of `repos` (hub folder
/// names, `datasets--owner--name`). A real-data test never passes without its data: a missing
/// one fails the test, naming what is missing and what to set.
pub fn hf_home_with(repos: &[&str]) -> PathBuf {
    let home = data_dir("HF_HOME", "hf-cache");
    let missing: Vec<&str> = repos.iter().copied().filter(|r| !home.join("hub").join(r).is_dir()).collect();
    assert!(
        missing.is_empty(),
        "real-data test, data missing: no {} in {} (HF_HOME={}). Set HF_HOME to the shared hub \
         cache, e.g. HF_HOME=../shared/data/hf-cache from the repository root (a relative HF_HOME is \
         taken from there; unset, it is <repo>/../shared/data/hf-cache)",
        missing.join(", "),
        home.join("hub").display(),
        std::env::var("HF_HOME").unwrap_or_else(|_| "<unset>".into()),
    );
    home
}

/// The shared hub cache with CIFAR-10, which most tests train on (see [`hf_home_with`]).
pub fn shared_hf_home() -> PathBuf {
    hf_home_with(&["datasets--uoft-cs--cifar10"])
}

/// The shared teachers folder (`$KD_TEACHERS_DIR`, see [`data_dir`]); fails the test when it is
/// missing.
pub fn teachers_dir() -> PathBuf {
    let dir = data_dir("KD_TEACHERS_DIR", "teachers");
    assert!(
        dir.is_dir(),
        "real-data test, data missing: no teachers folder {} (KD_TEACHERS_DIR={}). Set \
         KD_TEACHERS_DIR to the shared teachers, e.g. KD_TEACHERS_DIR=../shared/data/teachers from \
         the repository root (unset, it is <repo>/../shared/data/teachers)",
        dir.display(),
        std::env::var("KD_TEACHERS_DIR").unwrap_or_else(|_| "<unset>".into()),
    );
    dir
}

/// Runs the `kd` binary with the hub cache offline and a private kd-bench cache.
pub fn kd(args: &[&str], cwd: &Path, hf_home: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_CACHE_DIR", cwd.join(".kd-cache"))
        .output()
        .expect("kd runs");
    eprintln!("--- kd {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch project: `benchmarks/` with the given recipe files, the teachers (`$KD_TEACHERS_DIR`,
/// see [`data_dir`]) reachable as `../shared/data/teachers` like the real checkout's.
pub fn scratch_project(recipes: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("proj");
    std::fs::create_dir_all(root.join("benchmarks")).unwrap();
    for (name, text) in recipes {
        std::fs::write(root.join("benchmarks").join(name), text).unwrap();
    }
    let teachers = data_dir("KD_TEACHERS_DIR", "teachers");
    if teachers.is_dir() {
        std::fs::create_dir_all(dir.path().join("shared/data")).unwrap();
        std::os::unix::fs::symlink(&teachers, dir.path().join("shared/data/teachers")).unwrap();
    } else if recipes.iter().any(|(_, text)| text.contains("../shared/data/teachers/")) {
        // Not fatal here (tests of recipe errors need no teacher); a run that loads one fails.
        eprintln!(
            "no teachers folder {} (set KD_TEACHERS_DIR): runs that load a shared teacher will fail",
            teachers.display()
        );
    }
    dir
}

/// The real recipe text, for tests that tweak it.
pub fn real_recipe(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("benchmarks").join(format!("{name}.toml"))).unwrap()
}

/// Starts `kd args` in `cwd` (as [`kd`] does) and kills it as soon as `file` appears (an epoch
/// checkpoint, say); panics if it does not appear within five minutes.
pub fn kill_when_written(args: &[&str], cwd: &Path, hf_home: &Path, file: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_CACHE_DIR", cwd.join(".kd-cache"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kd starts");
    let t0 = std::time::Instant::now();
    while !file.exists() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(300), "{} never appeared", file.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The run folder of experiment `exp` whose config hash is `hash`, under project `root`.
pub fn run_dir(root: &Path, exp: &str, hash: &str) -> PathBuf {
    root.join("runs").join(exp).join(&hash[..12])
}

/// Every tensor of a checkpoint as its exact bits, by name (sorted): floats by their bit
/// patterns, integers (a sampler's state) as they are.
pub fn checkpoint_bits(path: &Path) -> Vec<(String, Vec<u8>)> {
    use candle_core::DType;
    let (t, _) = kd_core::checkpoint::load_checkpoint(path).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = t
        .iter()
        .map(|(k, t)| {
            let flat = t.flatten_all().unwrap();
            let bits: Vec<u8> = match flat.dtype() {
                DType::I64 => flat.to_vec1::<i64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
                DType::U32 => flat.to_vec1::<u32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
                _ => flat
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_bits().to_le_bytes())
                    .collect(),
            };
            (k.clone(), bits)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs `kd args` in a fresh scratch project of `recipes`, kills it as soon as the checkpoint
/// `checkpoint(root)` appears (after its first epoch), checks that it wrote no rows and
/// stopped before `epochs`, then runs it again to the end, which must resume. Returns the
/// project (kept alive) and its root.
pub fn killed_then_resumed(
    recipes: &[(&str, String)],
    args: &[&str],
    hf_home: &Path,
    csv_name: &str,
    checkpoint: &dyn Fn(&Path) -> PathBuf,
    epochs: usize,
) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch_project(recipes);
    let root = dir.path().join("proj");
    let ckpt = checkpoint(&root);
    kill_when_written(args, &root, hf_home, &ckpt);
    let csv = root.join("results").join(csv_name);
    assert!(
        !csv.exists() || kd_core::results::read_rows(&csv).unwrap().is_empty(),
        "a killed run writes no rows"
    );
    let (_, meta) = kd_core::checkpoint::load_checkpoint(&ckpt).unwrap();
    assert!(meta["completed_epochs"] != epochs.to_string(), "killed before the end");
    let out = kd(args, &root, hf_home);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming after epoch"), "{}", stderr(&out));
    (dir, root)
}

/// Rows equal to the last bit: values, best values and best epochs, in the same order.
pub fn assert_same_rows(got: &[kd_core::results::ResultRow], want: &[kd_core::results::ResultRow]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.role.as_str(), g.metric.as_str()), (w.role.as_str(), w.metric.as_str()));
        assert_eq!(g.value, w.value, "resumed {} {} differs", g.role, g.metric);
        assert_eq!(g.best_value, w.best_value);
        assert_eq!(g.best_epoch, w.best_epoch);
    }
}

/// Two checkpoints ([`checkpoint_bits`]) hold the same tensors, bit for bit.
pub fn assert_same_tensors(got: &[(String, Vec<u8>)], want: &[(String, Vec<u8>)]) {
    assert_eq!(got.len(), want.len());
    for ((ka, va), (kb, vb)) in want.iter().zip(got) {
        assert_eq!(ka, kb);
        assert!(va == vb, "tensor `{ka}` differs after the resume");
    }
}
