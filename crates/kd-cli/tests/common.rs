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

/// Where a smoke run in project `root` writes its rows when no `--results` is given: the
/// scratch folder inside the runs folder, never the committed `results/`.
pub fn smoke_results(root: &Path) -> PathBuf {
    root.join("runs").join(kd_run::reproduce::SCRATCH_RESULTS)
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

/// What an uninterrupted run of [`assert_resume_matches_uninterrupted`] left.
pub struct Uninterrupted {
    /// Its rows, in CSV order.
    pub rows: Vec<kd_core::results::ResultRow>,
    /// Its last epoch checkpoint, as [`checkpoint_bits`].
    pub checkpoint: Vec<(String, Vec<u8>)>,
    /// Its scratch project (results, history, runs), kept until this is dropped.
    pub project: tempfile::TempDir,
}

impl Uninterrupted {
    /// The project root the run ran in.
    pub fn root(&self) -> PathBuf {
        self.project.path().join("proj")
    }
}

/// Runs `kd args` (one variant `variant`, seed 0, of experiment `exp` whose recipe text is
/// `recipe`) in two fresh scratch projects: once uninterrupted, once killed as soon as its
/// first epoch checkpoint is written and then run again. Asserts that the killed run wrote no
/// rows and stopped before the end, that the second call resumed, and that it ends
/// bit-identical to the uninterrupted run: the same rows, the same checkpoint tensors.
pub fn assert_resume_matches_uninterrupted(
    exp: &str,
    recipe: &str,
    args: &[&str],
    variant: &str,
    hf_home: &Path,
) -> Uninterrupted {
    use kd_core::results::read_rows;
    let file = format!("{exp}.toml");
    let ckpt = |root: &Path, hash: &str| {
        root.join("runs").join(exp).join(&hash[..12]).join(format!("{variant}-seed0.ckpt.safetensors"))
    };
    // Uninterrupted reference.
    let a = scratch_project(&[(&file, recipe.to_string())]);
    let ra = a.path().join("proj");
    let out = kd(args, &ra, hf_home);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = read_rows(&smoke_results(&ra).join(format!("{exp}.csv"))).unwrap();
    let hash = &want.first().expect("the uninterrupted run wrote rows").config_hash;
    let ckpt_a = ckpt(&ra, hash);
    let full = checkpoint_bits(&ckpt_a);

    // Killed after its first epoch checkpoint, then resumed.
    let b = scratch_project(&[(&file, recipe.to_string())]);
    let rb = b.path().join("proj");
    let ckpt_b = ckpt(&rb, hash);
    kill_when_written(args, &rb, hf_home, &ckpt_b);
    let csv = smoke_results(&rb).join(format!("{exp}.csv"));
    assert!(!csv.exists() || read_rows(&csv).unwrap().is_empty(), "a killed run writes no rows");
    let completed = |p: &Path| kd_core::checkpoint::load_checkpoint(p).unwrap().1["completed_epochs"].clone();
    assert_ne!(completed(&ckpt_b), completed(&ckpt_a), "killed before the end");
    let out = kd(args, &rb, hf_home);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming after epoch"), "{}", stderr(&out));
    let got = read_rows(&csv).unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.role.as_str(), g.metric.as_str()), (w.role.as_str(), w.metric.as_str()));
        assert_eq!(g.value, w.value, "resumed {} {} differs", g.role, g.metric);
        assert_eq!(g.best_value, w.best_value);
        assert_eq!(g.best_epoch, w.best_epoch);
    }
    let resumed = checkpoint_bits(&ckpt_b);
    assert_eq!(resumed.len(), full.len());
    for ((ka, va), (kb, vb)) in full.iter().zip(&resumed) {
        assert_eq!(ka, kb);
        assert!(va == vb, "tensor `{ka}` differs after the resume");
    }
    Uninterrupted { rows: want, checkpoint: full, project: a }
}
