//! `kd list` over the real recipes: one aligned line per experiment, describing the `cpu`
//! profile a plain `kd reproduce` runs (not the recipe's base).

mod common;

#[test]
fn list_shows_every_recipe_aligned_with_its_cpu_profiles_models() {
    let root = common::repo_root();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_kd")).arg("list").current_dir(&root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let recipes = std::fs::read_dir(root.join("benchmarks"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "toml"));
    assert_eq!(lines.len(), recipes.count() + 2, "header, one line per recipe, footnote:\n{text}");
    // Aligned: every line's `dataset` column starts where the header's does.
    let col = lines[0].find("dataset").unwrap();
    for l in &lines[1..lines.len() - 1] {
        assert_eq!(l.chars().nth(col - 1), Some(' '), "misaligned: {l}");
        assert_ne!(l.chars().nth(col), Some(' '), "misaligned: {l}");
    }
    // dml-cifar10's base student is ResNet-32; its cpu profile trains ResNet-8.
    let dml = lines.iter().find(|l| l.starts_with("dml-cifar10 ")).unwrap();
    assert!(dml.contains("- -> resnet8 "), "{dml}");
}

/// A reader that stops early (`kd list --hashes | head -1`) ends kd quietly, not with a panic.
#[test]
fn a_closed_pipe_ends_kd_quietly() {
    use std::io::{BufRead, BufReader};
    // 400 recipes × 3 profiles: more than a pipe's buffer holds, so kd writes to a closed pipe.
    let dir = tempfile::tempdir().unwrap();
    let text = common::real_recipe("vanilla-kd-cifar10");
    for i in 0..400 {
        let name = format!("copy-{i:03}");
        let recipe = text.replacen("name = \"vanilla-kd-cifar10\"", &format!("name = \"{name}\""), 1);
        std::fs::write(dir.path().join(format!("{name}.toml")), recipe).unwrap();
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["list", "--hashes", "--recipes"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("experiment,profile,config_hash"), "{first}");
    // The reader is gone; kd's next writes hit a closed pipe.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}
