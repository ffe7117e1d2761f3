//! Bad input gets a clear error that names the file, key, repo, column or tensor at fault,
//! and writes nothing.

mod common;

use common::{kd, real_recipe, scratch_project, shared_hf_home, stderr};

const EXP: &str = "vanilla-kd-cifar10";

fn run_with(recipe: String, hf_home: &std::path::Path) -> (std::process::Output, tempfile::TempDir) {
    let dir = scratch_project(&[(&format!("{EXP}.toml"), recipe)]);
    let out = kd(&["reproduce", EXP, "--profile", "smoke"], &dir.path().join("proj"), hf_home);
    (out, dir)
}

fn assert_nothing_written(dir: &tempfile::TempDir) {
    let results = dir.path().join("proj/results").join(format!("{EXP}.csv"));
    assert!(!results.exists(), "a failed run must not write {}", results.display());
}

#[test]
fn unknown_recipe_key_names_file_key_and_line() {
    let home = tempfile::tempdir().unwrap();
    let recipe = real_recipe(EXP).replace("[train]\n", "[train]\nepohcs = 3\n");
    let (out, dir) = run_with(recipe, home.path());
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&format!("{EXP}.toml")), "{e}");
    assert!(e.contains("epohcs"), "{e}");
    assert!(e.contains("line"), "{e}");
    assert_nothing_written(&dir);
}

#[test]
fn unknown_key_in_a_profile_names_the_profile() {
    let home = tempfile::tempdir().unwrap();
    let recipe = real_recipe(EXP).replace("[profiles.smoke]\n", "[profiles.smoke]\ntrain.batchsize = 3\n");
    let (out, _dir) = run_with(recipe, home.path());
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("profile `smoke`") && e.contains("batchsize"), "{e}");
}

#[test]
fn missing_dataset_repo_names_repo_and_revision() {
    let hf = shared_hf_home();
    let recipe = real_recipe(EXP).replace("hub = \"uoft-cs/cifar10\"", "hub = \"uoft-cs/cifar10-nope\"");
    let (out, dir) = run_with(recipe, &hf);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("uoft-cs/cifar10-nope"), "{e}");
    assert!(e.contains("0b2714987fa478483af9968de7c934580d0bb9a2"), "{e}");
    assert_nothing_written(&dir);
}

#[test]
fn missing_dataset_column_names_the_column() {
    let hf = shared_hf_home();
    let recipe = real_recipe(EXP).replace("image_column = \"img\"", "image_column = \"picture\"");
    let (out, dir) = run_with(recipe, &hf);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("picture"), "{e}");
    assert!(e.contains("img"), "the error lists the columns that exist: {e}");
    assert_nothing_written(&dir);
}

#[test]
fn checkpoint_for_the_wrong_architecture_names_the_tensors() {
    let hf = shared_hf_home();
    // The resnet56 checkpoint declared as a resnet8x4 teacher: shapes differ from conv1 on.
    let recipe = real_recipe(EXP).replace("arch = \"resnet56\"", "arch = \"resnet8x4\"");
    let (out, dir) = run_with(recipe, &hf);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("resnet56-4bfd9763.th"), "names the file: {e}");
    assert!(e.contains("conv1.weight"), "names a tensor: {e}");
    assert_nothing_written(&dir);
}

#[test]
fn teacher_with_wrong_hash_is_refused() {
    let hf = shared_hf_home();
    let recipe = real_recipe(EXP).replace(
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let (out, dir) = run_with(recipe, &hf);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("SHA-256") && e.contains("4bfd9763"), "{e}");
    assert_nothing_written(&dir);
}

/// An output folder that cannot be written (here a file where the results folder should be)
/// fails before any data is read or anything trains, naming the folder. Before the check it was
/// found only when the first run's rows were appended, after training.
#[test]
fn an_unwritable_results_folder_fails_before_any_data_is_read() {
    let hf = shared_hf_home();
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let not_a_folder = dir.path().join("results-file");
    std::fs::write(&not_a_folder, b"not a folder").unwrap();
    let args = ["reproduce", EXP, "--profile", "smoke", "--variants", "plain", "--results"];
    let out = kd(&[&args[..], &[not_a_folder.to_str().unwrap()]].concat(), &root, &hf);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("results folder") && e.contains(&not_a_folder.display().to_string()), "{e}");
    assert!(
        !e.contains("data: uoft-cs/cifar10") && !e.contains("epoch"),
        "no data read, nothing trained: {e}"
    );
    assert_eq!(std::fs::read(&not_a_folder).unwrap(), b"not a folder");
}
