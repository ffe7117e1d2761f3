//! Every recipe in benchmarks/ loads, every profile resolves, its method config parses, and its
//! `cite` keys resolve in papers/references.bib.

mod common;

use kd_core::recipe::{RecipeFile, STANDARD_PROFILES};

#[test]
fn every_recipe_resolves_every_profile_and_cites_known_papers() {
    let root = common::repo_root();
    let bib = std::fs::read_to_string(root.join("papers/references.bib")).unwrap();
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("benchmarks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        n += 1;
        let file = RecipeFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(file.name(), Some(stem), "{}: experiment.name must match the file name", path.display());
        for p in STANDARD_PROFILES {
            let r = file.resolve(Some(p)).unwrap_or_else(|e| panic!("{}: profile {p}: {e}", path.display()));
            assert!(!r.experiment.cite.is_empty(), "{}: cites no paper", path.display());
            for key in &r.experiment.cite {
                assert!(
                    bib.contains(&format!("{{{key},")),
                    "{}: cite key `{key}` is not in papers/references.bib",
                    path.display()
                );
            }
        }
    }
    assert!(n >= 1, "no recipes found");
}

#[test]
fn every_recipe_method_config_parses() {
    let root = common::repo_root();
    for entry in std::fs::read_dir(root.join("benchmarks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let file = RecipeFile::load(&path).unwrap();
        for p in STANDARD_PROFILES {
            let r = file.resolve(Some(p)).unwrap();
            kd_run::registry::ParsedMethod::parse(&r)
                .unwrap_or_else(|e| panic!("{}: {p}: {e:#}", path.display()));
        }
    }
}
