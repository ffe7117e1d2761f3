//! Fuzz-style robustness of recipe loading: every committed recipe, mutated (keys deleted,
//! types swapped, numbers out of range, path-like strings in every string field), written to a
//! temp dir under its own stem and loaded, resolved in every profile and validated. Loading
//! never panics, every refusal names the file and a key, whatever is accepted is sane, and
//! nothing is written outside the temp dir.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kd_core::recipe::{is_plain_name, OptimizerSpec, Recipe, RecipeFile};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use toml::Value;

const PATH_LIKE: [&str; 3] = ["/tmp/x", "../../y", "a/b"];

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Every value of the table (tables and arrays too), by path.
fn paths(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Table(t) => {
            for (k, x) in t {
                here.push(Seg::Key(k.clone()));
                out.push(here.clone());
                paths(x, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                here.push(Seg::Index(i));
                out.push(here.clone());
                paths(x, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn dotted(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => s.push_str(&format!(".{k}")),
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match (cur, seg) {
            (Value::Table(t), Seg::Key(k)) => t.get_mut(k)?,
            (Value::Array(a), Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn delete(v: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else { return };
    match (get_mut(v, parent), last) {
        (Some(Value::Table(t)), Seg::Key(k)) => {
            t.remove(k);
        }
        (Some(Value::Array(a)), Seg::Index(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// A value of another type than `v`'s (string ↔ int ↔ float ↔ bool ↔ array ↔ table).
fn other_type(v: &Value, rng: &mut ChaCha8Rng) -> Value {
    let choices = [
        Value::String("x".into()),
        Value::Integer(7),
        Value::Float(2.5),
        Value::Boolean(true),
        Value::Array(vec![Value::Integer(1), Value::String("a".into())]),
        Value::Table(Default::default()),
    ];
    loop {
        let c = choices[rng.random_range(0..choices.len())].clone();
        if c.type_str() != v.type_str() {
            return c;
        }
    }
}

fn out_of_range(rng: &mut ChaCha8Rng) -> Value {
    let choices = [
        Value::Integer(-1),
        Value::Integer(0),
        Value::Float(-1.0),
        Value::Float(0.0),
        Value::Float(f64::NAN),
        Value::Float(1e300),
        Value::Float(f64::INFINITY),
        Value::Float(-1e300),
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Names, sizes and modification times of the files under `dir` (not following `target`, `.git`).
fn snapshot(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, Option<SystemTime>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name == ".git" || name == ".kd-cache" {
            continue;
        }
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            snapshot(&p, out);
        } else {
            out.insert(p, (m.len(), m.modified().ok()));
        }
    }
}

/// What validation accepted must be sane: the properties it exists to guarantee.
fn assert_sane(r: &Recipe, stem: &str, text: &str) {
    let ctx = || format!("accepted:\n{text}");
    assert!(is_plain_name(&r.experiment.name) && r.experiment.name == stem, "{}", ctx());
    let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\']);
    assert!(r.experiment.variants.iter().all(|v| plain(v)), "{}", ctx());
    assert!(plain(&r.student.arch) && r.teacher_sections().iter().all(|t| plain(&t.arch)), "{}", ctx());
    assert!(!r.data.revision.starts_with('/') && !r.data.revision.split('/').any(|p| !plain(p)), "{}", ctx());
    assert!(r.train.epochs > 0 && r.train.batch_size > 0 && r.train.eval_batch_size > 0, "{}", ctx());
    assert!(r.data.train_limit != Some(0) && r.data.eval_limit != Some(0), "{}", ctx());
    let lr = r.train.optimizer.lr();
    assert!(lr.is_finite() && lr > 0.0, "{}", ctx());
    match r.train.optimizer {
        OptimizerSpec::Sgd { momentum, weight_decay, .. } => {
            assert!((0.0..1.0).contains(&momentum), "{}", ctx());
            assert!(weight_decay.is_finite() && weight_decay >= 0.0, "{}", ctx());
        }
        OptimizerSpec::Adamw { beta1, beta2, eps, weight_decay, .. } => {
            assert!((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2), "{}", ctx());
            assert!(eps.is_finite() && eps > 0.0, "{}", ctx());
            assert!(weight_decay.is_finite() && weight_decay >= 0.0, "{}", ctx());
        }
    }
    assert!(r.train.lr_schedule.validate().is_ok(), "{}", ctx());
}

/// Loads `text` as `dir/<stem>.toml`, resolves every profile and re-validates (no overrides):
/// `Ok(n)` resolved recipes, or the first error's message.
fn try_load(dir: &Path, stem: &str, text: &str) -> Result<usize, String> {
    let path = dir.join(format!("{stem}.toml"));
    std::fs::write(&path, text).unwrap();
    let f = RecipeFile::load(&path).map_err(|e| e.to_string())?;
    let mut n = 0;
    let names: Vec<Option<&str>> =
        std::iter::once(None).chain(f.profiles.keys().map(|k| Some(k.as_str()))).collect();
    for p in names {
        let r = f.resolve(p).map_err(|e| e.to_string())?;
        let again = r.with_overrides(&f.path, &[]).map_err(|e| e.to_string())?;
        // Compared as text: a NaN inside a method's opaque `[distill]` table (which kd-core does
        // not validate; the method's own parse refuses it) is never equal to itself.
        assert_eq!(format!("{again:?}"), format!("{r:?}"));
        assert_sane(&r, stem, text);
        n += 1;
    }
    Ok(n)
}

#[test]
fn mutated_committed_recipes_never_panic_and_errors_name_file_and_key() {
    let root = workspace_root();
    let mut recipes: Vec<(String, String)> = std::fs::read_dir(root.join("benchmarks"))
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "toml" {
                return None;
            }
            Some((p.file_stem()?.to_str()?.to_string(), std::fs::read_to_string(&p).ok()?))
        })
        .collect();
    recipes.sort();
    assert!(recipes.len() >= 10, "found {} recipes", recipes.len());

    let mut before = BTreeMap::new();
    snapshot(&root, &mut before);
    let cwd = std::env::current_dir().unwrap();
    let outside: Vec<PathBuf> = PATH_LIKE
        .iter()
        .flat_map(|p| [PathBuf::from(p), cwd.join(p), root.join("results").join(p)])
        .collect();
    let existed: Vec<bool> = outside.iter().map(|p| p.exists()).collect();

    let tmp = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(20240611);
    let (mut tried, mut refused, mut accepted) = (0usize, 0usize, 0usize);
    let mut samples: BTreeMap<String, String> = BTreeMap::new();
    let mut accepted_path_like = std::collections::BTreeSet::new();
    for (stem, text) in &recipes {
        let original = Value::Table(toml::from_str(text).unwrap());
        let mut all = Vec::new();
        paths(&original, &mut Vec::new(), &mut all);
        let strings: Vec<&Vec<Seg>> = all
            .iter()
            .filter(|p| matches!(get_mut(&mut original.clone(), p), Some(Value::String(_))))
            .collect();
        let numbers: Vec<&Vec<Seg>> = all
            .iter()
            .filter(|p| {
                matches!(get_mut(&mut original.clone(), p), Some(Value::Integer(_) | Value::Float(_)))
            })
            .collect();

        let mut cases: Vec<(String, Value)> = Vec::new();
        // Path-like strings in every string field.
        for p in &strings {
            for s in PATH_LIKE {
                let mut v = original.clone();
                *get_mut(&mut v, p).unwrap() = Value::String(s.into());
                cases.push((format!("path-like {} = {s}", dotted(p)), v));
            }
        }
        // Random compound mutations.
        for _ in 0..24 {
            let mut v = original.clone();
            let mut what = Vec::new();
            for _ in 0..rng.random_range(1..=3) {
                match rng.random_range(0..4) {
                    0 => {
                        let p = &all[rng.random_range(0..all.len())];
                        delete(&mut v, p);
                        what.push(format!("delete {p:?}"));
                    }
                    1 => {
                        let p = &all[rng.random_range(0..all.len())];
                        if let Some(x) = get_mut(&mut v, p) {
                            *x = other_type(x, &mut rng);
                            what.push(format!("swap {p:?} -> {x}"));
                        }
                    }
                    2 if !numbers.is_empty() => {
                        let p = numbers[rng.random_range(0..numbers.len())];
                        if let Some(x) = get_mut(&mut v, p) {
                            *x = out_of_range(&mut rng);
                            what.push(format!("range {p:?} -> {x}"));
                        }
                    }
                    _ => {
                        let p = strings[rng.random_range(0..strings.len())];
                        if let Some(x) = get_mut(&mut v, p) {
                            *x = Value::String(PATH_LIKE[rng.random_range(0..3)].into());
                            what.push(format!("path {p:?} -> {x}"));
                        }
                    }
                }
            }
            cases.push((what.join("; "), v));
        }

        for (what, v) in cases {
            let Ok(mutated) = toml::to_string(&v) else { continue };
            tried += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| try_load(tmp.path(), stem, &mutated)));
            let path = tmp.path().join(format!("{stem}.toml"));
            match outcome {
                Err(_) => panic!("panicked on {stem} mutated by {what}:\n{mutated}"),
                Ok(Ok(_)) => {
                    accepted += 1;
                    if let Some(field) = what.strip_prefix("path-like ") {
                        accepted_path_like.insert(field.split(" = ").next().unwrap_or("").to_string());
                    }
                }
                Ok(Err(e)) => {
                    refused += 1;
                    assert!(e.contains(&path.display().to_string()), "{stem} / {what}: no file in: {e}");
                    assert!(e.contains("key `"), "{stem} / {what}: no key in: {e}");
                    let kind = e.split(": ").last().unwrap_or("").chars().take(40).collect::<String>();
                    samples.entry(kind).or_insert_with(|| format!("{what}: {e}"));
                }
            }
        }
    }
    eprintln!("{tried} mutated recipes: {refused} refused, {accepted} accepted; one message per kind:");
    for m in samples.values() {
        eprintln!("  {m}");
    }
    eprintln!("string fields that accept path-like values (not path components): {accepted_path_like:?}");
    assert!(tried >= 200, "only {tried} mutated recipes");
    assert!(refused > tried / 2, "most mutations must be refused: {refused} of {tried}");

    // Nothing written outside the temp dir: the temp dir holds only the recipes written there,
    // the path-like targets were not created, and the checkout is unchanged.
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(recipes.iter().any(|(s, _)| name == format!("{s}.toml")), "wrote {name}");
    }
    for (p, e) in outside.iter().zip(existed) {
        assert_eq!(p.exists(), e, "{} appeared", p.display());
    }
    let mut after = BTreeMap::new();
    snapshot(&root, &mut after);
    assert_eq!(before, after, "the checkout changed");
}
