//! `kd cite`: every recipe's keys resolve; the configuration entry carries the full hash; an
//! unknown key is an error naming it; the .bib parser matches braces.

use std::path::{Path, PathBuf};
use std::process::Command;

use kd_analysis::cite::{cite, parse_bib};
use kd_run::reproduce::{load_recipe_file, recipe_hash, Paths};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn recipes(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".toml").map(String::from))
        .collect();
    v.sort();
    v
}

#[test]
fn every_recipe_cites_resolvable_keys() {
    let root = repo_root();
    let bib_path = root.join("papers/references.bib");
    let bib = parse_bib(&bib_path, &std::fs::read_to_string(&bib_path).unwrap()).unwrap();
    let names = recipes(&root.join("benchmarks"));
    assert!(!names.is_empty());
    for exp in names {
        let file = load_recipe_file(&root.join("benchmarks"), &exp).unwrap();
        let profiles: Vec<String> = file.profiles.keys().cloned().collect();
        let keys = file.resolve(None).unwrap().experiment.cite;
        assert!(!keys.is_empty(), "{exp} cites no paper");
        // The binary, as a user runs it.
        let out =
            Command::new(env!("CARGO_BIN_EXE_kd")).args(["cite", &exp]).current_dir(&root).output().unwrap();
        assert!(out.status.success(), "kd cite {exp}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        for key in &keys {
            let entry = bib.iter().find(|e| &e.key == key).unwrap();
            assert!(text.contains(&entry.text), "kd cite {exp} lacks {key} verbatim");
        }
        // Every profile's configuration entry names its full hash.
        let paths = Paths {
            root: root.clone(),
            recipes: root.join("benchmarks"),
            results: root.join("results"),
            runs: root.join("runs"),
            scratch: false,
        };
        for profile in profiles {
            let hash = recipe_hash(&file.resolve(Some(&profile)).unwrap()).unwrap();
            let (text, _) = cite(&paths, &bib_path, &exp, &profile, None).unwrap();
            assert!(text.contains(&format!("configuration hash {hash}")), "{text}");
            assert!(text.contains(&format!("@misc{{kdbench:{exp}:{profile}:{}", &hash[..12])), "{text}");
            assert!(text.contains(env!("CARGO_PKG_REPOSITORY")) && text.contains(env!("CARGO_PKG_VERSION")));
            assert_eq!(text.matches('{').count(), text.matches('}').count());
        }
    }
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("benchmarks")).unwrap();
    std::fs::create_dir_all(root.join("papers")).unwrap();
    let recipe = std::fs::read_to_string(repo_root().join("benchmarks/vanilla-kd-cifar10.toml"))
        .unwrap()
        .replace("cite = [\"hinton2015distilling\"", "cite = [\"nosuchpaper2099\", \"hinton2015distilling\"");
    assert!(recipe.contains("nosuchpaper2099"));
    std::fs::write(root.join("benchmarks/vanilla-kd-cifar10.toml"), recipe).unwrap();
    std::fs::copy(repo_root().join("papers/references.bib"), root.join("papers/references.bib")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["cite", "vanilla-kd-cifar10", "--recipes"])
        .arg(root.join("benchmarks"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`nosuchpaper2099`") && err.contains("references.bib"), "{err}");
    assert!(!err.contains("`hinton2015distilling`,"), "only the missing key is named: {err}");
}

#[test]
fn bib_parser_matches_braces() {
    let p = Path::new("x.bib");
    let text = "% a comment with @ sign? no: plain text\n@comment{ignored, {x}}\n\
                @Article{a1,\n  title = {A {Nested} Title},\n  year = 2020\n}\n\n\
                @misc(b2, note = {paren form})\n";
    let e = parse_bib(p, text).unwrap();
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a1", "b2"]);
    assert_eq!(e[0].kind, "article");
    assert_eq!(e[0].line, 3);
    assert!(e[0].text.starts_with("@Article{a1,") && e[0].text.ends_with("2020\n}"));
    assert_eq!(e[1].text, "@misc(b2, note = {paren form})");

    let err = parse_bib(p, "@book{x,\n title = {open\n").unwrap_err().to_string();
    assert!(err.contains("x.bib:1") && err.contains("unbalanced"), "{err}");
    let err = parse_bib(p, "@book{x, a={1}}\n@book{x, a={2}}\n").unwrap_err().to_string();
    assert!(err.contains("`x`") && err.contains("line 1"), "{err}");
}
