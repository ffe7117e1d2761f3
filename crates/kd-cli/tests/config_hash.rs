//! The configuration hash names what determines the numbers, not where files lie (issue 21,
//! item 8): the pinned hashes of every recipe, a teacher moved elsewhere (found through
//! `$KD_TEACHERS_DIR`) keeping its configuration, and rows written under a configuration's old
//! (v1) hash staying that configuration's for `kd reproduce`, `kd compare`, `kd report` and
//! `kd cite`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{kd, real_recipe, repo_root, scratch_project, shared_hf_home, stderr, teachers_dir};
use kd_core::recipe_hash::legacy_recipe_hash;
use kd_core::results::read_rows;
use kd_run::reproduce::{load_recipe_file, recipe_hash};

const EXP: &str = "vanilla-kd-cifar10";
const TEACHER: &str = "../shared/data/teachers/akamaster-resnet56-cifar10/resnet56-4bfd9763.th";

/// Every recipe's profiles hash to the values pinned in `benchmarks/pins/config-hashes.csv`,
/// and so do their v1 names (those of the committed rows).
#[test]
fn every_profiles_hashes_equal_the_pinned_ones() {
    let root = repo_root();
    let pins = root.join("benchmarks/pins/config-hashes.csv");
    let pinned = std::fs::read_to_string(&pins).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["list", "--hashes", "--recipes"])
        .arg(root.join("benchmarks"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let now = String::from_utf8(out.stdout).unwrap();
    let diff: Vec<String> = now
        .lines()
        .filter(|l| !pinned.lines().any(|p| p == *l))
        .map(|l| format!("now    {l}"))
        .chain(pinned.lines().filter(|p| !now.lines().any(|l| l == *p)).map(|p| format!("pinned {p}")))
        .collect();
    assert!(
        diff.is_empty(),
        "configuration hashes moved ({}); if a recipe change is meant to make a new configuration, \
         say so in its commit and rewrite the pins with `kd list --hashes > {}`:\n{}",
        diff.len(),
        pins.display(),
        diff.join("\n")
    );
    assert!(now.lines().count() > 50, "{now}");
}

/// The same recipe with its teacher file somewhere else (same bytes) is the same configuration;
/// only the SHA-256 matters. Before the fix the path was hashed, so the hashes differed.
#[test]
fn moving_the_teacher_file_keeps_the_configuration_hash() {
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let moved = real_recipe(EXP)
        .replace(TEACHER, "/nowhere/teachers/akamaster-resnet56-cifar10/resnet56-4bfd9763.th");
    assert_ne!(moved, real_recipe(EXP), "the recipe names {TEACHER}");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join(format!("{EXP}.toml")), &moved).unwrap();
    for profile in ["smoke", "cpu", "paper"] {
        let here = load_recipe_file(&root.join("benchmarks"), EXP).unwrap().resolve(Some(profile)).unwrap();
        let there = load_recipe_file(&other, EXP).unwrap().resolve(Some(profile)).unwrap();
        assert_eq!(recipe_hash(&here).unwrap(), recipe_hash(&there).unwrap(), "{profile}");
        assert_ne!(
            legacy_recipe_hash(&here).unwrap(),
            legacy_recipe_hash(&there).unwrap(),
            "v1 hashed the path"
        );
    }
    // A title or citation fix, or one more variant, is still the same configuration.
    let retitled = real_recipe(EXP).replacen("title = \"", "title = \"Retitled: ", 1).replacen(
        "variants = [\"plain\", \"kd\"]",
        "variants = [\"plain\", \"kd\", \"kd-2\"]",
        1,
    );
    assert_ne!(retitled, real_recipe(EXP));
    std::fs::write(other.join(format!("{EXP}.toml")), &retitled).unwrap();
    let base = load_recipe_file(&root.join("benchmarks"), EXP).unwrap().resolve(Some("cpu")).unwrap();
    let file = kd_core::recipe::RecipeFile::load(other.join(format!("{EXP}.toml"))).unwrap();
    let mut r = file.resolve(Some("cpu")).unwrap();
    assert_eq!(r.experiment.variants.len(), 3);
    r.experiment.variants.truncate(2);
    r.experiment.variants.push("kd-t8".into());
    assert_eq!(recipe_hash(&base).unwrap(), recipe_hash(&r).unwrap());
    let mut other_temperature = base.clone();
    other_temperature.distill.insert("temperature".into(), toml::Value::Float(8.0));
    assert_ne!(recipe_hash(&base).unwrap(), recipe_hash(&other_temperature).unwrap());
}

/// `kd reproduce` finds a teacher whose recipe path does not exist in `$KD_TEACHERS_DIR` (by
/// the path's folder and file name), verified by SHA-256, and its rows name the configuration
/// of the recipe that points at the real path. Before the fix KD_TEACHERS_DIR was not read.
#[test]
fn a_teacher_found_through_kd_teachers_dir_gives_the_same_configuration() {
    let hf = shared_hf_home();
    let moved =
        real_recipe(EXP).replace(TEACHER, "../not-here/akamaster-resnet56-cifar10/resnet56-4bfd9763.th");
    let dir = scratch_project(&[(&format!("{EXP}.toml"), moved)]);
    let root = dir.path().join("proj");
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["reproduce", EXP, "--profile", "smoke", "--variants", "kd"])
        .current_dir(&root)
        .env("HF_HOME", &hf)
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_CACHE_DIR", root.join(".kd-cache"))
        .env("KD_TEACHERS_DIR", teachers_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&common::smoke_results(&root).join(format!("{EXP}.csv"))).unwrap();
    let real =
        load_recipe_file(&repo_root().join("benchmarks"), EXP).unwrap().resolve(Some("smoke")).unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.config_hash == recipe_hash(&real).unwrap()), "{rows:?}");
    // Without it (and no cache), the error names every place it looked.
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["reproduce", EXP, "--profile", "smoke", "--variants", "kd", "--force"])
        .current_dir(&root)
        .env("HF_HOME", &hf)
        .env("HF_HUB_OFFLINE", "1")
        .env("KD_CACHE_DIR", root.join(".kd-cache-2"))
        .env_remove("KD_TEACHERS_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not-here/akamaster-resnet56-cifar10/resnet56-4bfd9763.th"),
        "{}",
        stderr(&out)
    );
}

/// Rewrites every `config_hash` field equal to `from` in a CSV or JSONL file to `to`.
fn rename_hash(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} holds {from}", file.display());
    std::fs::write(file, text.replace(from, to)).unwrap();
}

/// Rows and history written under the configuration's v1 hash (as every row committed before
/// this scheme) are this configuration's: `kd reproduce` skips their runs and adopts their run
/// folder, new rows join them in `kd compare` and `kd report`, `kd cite --config <v1 prefix>`
/// finds them.
#[test]
fn rows_under_the_old_hash_stay_with_their_configuration() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let recipe = load_recipe_file(&root.join("benchmarks"), EXP).unwrap().resolve(Some("smoke")).unwrap();
    let (current, v1) = (recipe_hash(&recipe).unwrap(), legacy_recipe_hash(&recipe).unwrap());
    assert_ne!(current, v1);
    let plain0 = ["reproduce", EXP, "--profile", "smoke", "--variants", "plain", "--seeds", "0"];
    let out = kd(&plain0, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    // Make it look as an older kd-bench left it: v1 hash in rows, history and run folder.
    let results = common::smoke_results(&root);
    let csv = results.join(format!("{EXP}.csv"));
    rename_hash(&csv, &current, &v1);
    rename_hash(&results.join(format!("{EXP}.history.jsonl")), &current, &v1);
    let runs = root.join("runs").join(EXP);
    std::fs::rename(runs.join(&current[..12]), runs.join(&v1[..12])).unwrap();

    let out = kd(&plain0, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("plain seed 0: rows already in"), "{}", stderr(&out));
    assert_eq!(read_rows(&csv).unwrap().len(), 2, "the old run was not re-trained");
    assert!(runs.join(&current[..12]).join("plain-seed0.safetensors").exists(), "run folder adopted");
    assert!(!runs.join(&v1[..12]).exists());

    let out =
        kd(&["reproduce", EXP, "--profile", "smoke", "--variants", "plain", "--seeds", "1"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = read_rows(&csv).unwrap();
    assert_eq!(rows.iter().filter(|r| r.config_hash == v1).count(), 2);
    assert_eq!(rows.iter().filter(|r| r.config_hash == current).count(), 2);

    // One configuration of two seeds, nothing left out.
    let out = kd(&["compare", csv.to_str().unwrap(), "--metric", "top1"], &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!stderr(&out).contains("left out") && !table.contains("left out"), "{table}\n{}", stderr(&out));
    assert!(table.lines().any(|l| l.contains("plain") && l.contains(" 2 ")), "n = 2 for plain:\n{table}");

    let tables = dir.path().join("tables");
    let out = kd(
        &[
            "report",
            EXP,
            "--profile",
            "smoke",
            "--tables",
            tables.to_str().unwrap(),
            "--plots",
            dir.path().join("plots").to_str().unwrap(),
        ],
        &root,
        &hf,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("left out"), "{}", stderr(&out));
    let md = std::fs::read_to_string(tables.join(format!("{EXP}.md"))).unwrap();
    assert!(md.contains(&current[..12]), "{md}");

    let bib = repo_root().join("papers/references.bib");
    let cite = ["cite", EXP, "--profile", "smoke", "--config", &v1[..12], "--bib", bib.to_str().unwrap()];
    let out = kd(&cite, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&current),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
