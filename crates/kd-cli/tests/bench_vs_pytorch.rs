//! `kd bench --vs-pytorch` end to end with a stand-in for Python (CI has no PyTorch): the rounds
//! alternate, the script's JSON is read, the table compares medians, and a Python without torch
//! or a script that prints something else gets an error that says what to do.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A `python` that answers `-c` with `version` (or fails as a Python without torch does), and
/// for `-` reads the script from standard input, records the order of calls and prints
/// `body` (`$archs` is the `--archs` value).
fn fake_python(dir: &Path, import_ok: bool, body: &str) -> PathBuf {
    let path = dir.join("python");
    let check = if import_ok {
        "echo 9.9.9-fake; exit 0".to_string()
    } else {
        "echo \"ModuleNotFoundError: No module named 'torch'\" >&2; exit 1".to_string()
    };
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = \"-c\" ]; then {check}; fi\n\
         cat > \"{dir}/script.py\"\n\
         while [ $# -gt 0 ]; do [ \"$1\" = \"--archs\" ] && archs=$2; shift; done\n\
         echo call >> \"{dir}/calls\"\n{body}\n",
        dir = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn bench(python: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(["bench", "--vs-pytorch", "--python"])
        .arg(python)
        .args(["--train-batch", "4", "--eval-batch", "4", "--repeats", "1"])
        .args(extra)
        .output()
        .expect("kd runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn rounds_alternate_and_the_table_compares_medians() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(
        dir.path(),
        true,
        r#"echo '{"torch": "fake"}'
for a in $(echo "$archs" | tr , ' '); do echo "{\"arch\": \"$a\", \"train\": 1.0, \"infer\": 3.0}"; done"#,
    );
    let out = bench(&python, &["--archs", "resnet8", "--rounds", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("torch 9.9.9-fake; 3 alternating rounds"), "{stdout}");
    for r in 1..=3 {
        assert!(stdout.contains(&format!("round {r}/3:  resnet8 train ")), "{stdout}");
    }
    // One script run per round, and the script is the committed one.
    assert_eq!(std::fs::read_to_string(dir.path().join("calls")).unwrap().lines().count(), 3);
    let sent = std::fs::read_to_string(dir.path().join("script.py")).unwrap();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benchmarks/perf/pytorch_step.py");
    assert_eq!(sent, std::fs::read_to_string(committed).unwrap());
    // A real ResNet-8 step on 4 images is far faster than 1 example/s: kd-bench wins every round.
    let train = stdout.lines().find(|l| l.starts_with("| resnet8 train | 4 | examples/s |")).expect(&stdout);
    assert!(train.contains("| 1 1 1 | ") && train.ends_with("| 3 / 3 |"), "{train}");
    let infer = stdout.lines().find(|l| l.starts_with("| resnet8 infer | 4 | examples/s |")).expect(&stdout);
    assert!(infer.contains("| 3 3 3 | ") && infer.contains("| 3 | **"), "{infer}");
    assert!(
        stdout.contains("cpu ") && stdout.contains(" threads; kd-bench and PyTorch per round"),
        "{stdout}"
    );
}

#[test]
fn without_torch_it_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(dir.path(), false, "");
    let out = bench(&python, &["--archs", "resnet8", "--rounds", "1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot `import torch` (ModuleNotFoundError: No module named 'torch')"),
        "{stderr}"
    );
    assert!(stderr.contains("pip install torch transformers"), "{stderr}");
    assert!(!dir.path().join("calls").exists(), "no round ran");
}

#[test]
fn bad_script_output_and_models_without_a_twin_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let python = fake_python(dir.path(), true, "echo 'resnet8 390.0 1200.0'");
    let out = bench(&python, &["--archs", "resnet8", "--rounds", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("benchmarks/perf/pytorch_step.py: output line 1 is not JSON"), "{stderr}");

    let out = bench(&python, &["--archs", "resnet8,wrn_40_2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`wrn_40_2` has no PyTorch twin"), "{stderr}");
}
