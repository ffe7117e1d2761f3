//! A finished run is recorded final model first, then rows, then history: killed the moment its
//! rows appear, the run has its final model already, and a re-run (nothing left to train) has
//! its history line back from the checkpoint. Rows never stand for a model that is missing.

mod common;

use common::{hf_home_with, kd, kill_when_written, real_recipe, scratch_project, stderr};

const EXP: &str = "vanilla-kd-cifar10";

#[test]
fn rows_appear_only_after_the_final_model_and_a_lost_history_line_comes_back() {
    let hf = hf_home_with(&["datasets--uoft-cs--cifar10"]);
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let args = ["reproduce", EXP, "--profile", "smoke", "--variants", "plain"];
    let csv = common::smoke_results(&root).join(format!("{EXP}.csv"));
    kill_when_written(&args, &root, &hf, &csv);
    let runs = root.join("runs").join(EXP);
    let run_dir = std::fs::read_dir(&runs).unwrap().next().expect("a run folder").unwrap().path();
    assert!(
        run_dir.join("plain-seed0.safetensors").exists(),
        "the rows exist, so the final model must: {:?}",
        std::fs::read_dir(&run_dir).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
    );
    // Whatever the kill took (the history line, or nothing), a re-run repairs it and trains nothing.
    let out = kd(&args, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing to do"), "{}", stderr(&out));
    let history =
        std::fs::read_to_string(common::smoke_results(&root).join(format!("{EXP}.history.jsonl"))).unwrap();
    assert_eq!(history.lines().filter(|l| l.contains("\"variant\":\"plain\"")).count(), 1, "{history}");
}

#[test]
fn a_seed_given_twice_trains_once_and_writes_one_set_of_rows() {
    let hf = hf_home_with(&["datasets--uoft-cs--cifar10"]);
    let dir = scratch_project(&[(&format!("{EXP}.toml"), real_recipe(EXP))]);
    let root = dir.path().join("proj");
    let args = ["reproduce", EXP, "--profile", "smoke", "--variants", "plain,plain", "--seeds", "0,0"];
    let out = kd(&args, &root, &hf);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = kd_core::results::read_rows(&common::smoke_results(&root).join(format!("{EXP}.csv"))).unwrap();
    assert_eq!(rows.len(), 2, "top-1 and top-5 of one run: {rows:?}");
}
