//! `kd bench --vs-pytorch`: kd-bench's measurement and PyTorch's (`benchmarks/perf/pytorch_step.py`,
//! built into the binary so the script that runs is the one committed with it) in alternating rounds
//! on one machine, then medians, their ratio and the rounds each side won. Machines of one kind
//! differ and drift within minutes, so only alternating rounds in one period compare.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;

use super::{batches, is_text, measure, Args, Measurement};
use kd_run::env;

/// The PyTorch side, as committed beside the recipes.
const SCRIPT: &str = "benchmarks/perf/pytorch_step.py";
const SCRIPT_TEXT: &str = include_str!("../../../../benchmarks/perf/pytorch_step.py");

const HOW_TO_GET_TORCH: &str = "install PyTorch (and transformers, for BERTs) in a virtual \
environment outside the repository: `python3 -m venv ~/venv-torch && ~/venv-torch/bin/pip install \
torch transformers`, then `kd bench --vs-pytorch --python ~/venv-torch/bin/python`";

/// The family of PyTorch model that measures the same model as kd-bench does for an
/// architecture; one script run per family and round, since their batches and inputs differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Twin {
    /// `resnetN`: CIFAR ResNet, option-A shortcuts.
    Resnet,
    /// `bert-LN`: `BertForSequenceClassification` of MiniLM's width (needs transformers).
    Bert,
}

impl Twin {
    fn of(arch: &str) -> Option<Twin> {
        let numbered = |prefix: &str| {
            arch.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        if numbered("resnet") {
            Some(Twin::Resnet)
        } else if numbered("bert-L") {
            Some(Twin::Bert)
        } else {
            None
        }
    }

    fn imports(self) -> &'static str {
        match self {
            Twin::Resnet => "import torch",
            Twin::Bert => "import torch, transformers",
        }
    }

    /// The script's arguments for `archs`, from kd bench's own.
    fn arguments(self, archs: &[&str], args: &Args) -> Vec<String> {
        let (train_batch, eval_batch) = batches(archs[0], args);
        let mut a = vec![
            "--json".to_string(),
            "--archs".into(),
            archs.join(","),
            "--train-batch".into(),
            train_batch.to_string(),
            "--eval-batch".into(),
            eval_batch.to_string(),
            "--repeats".into(),
            args.repeats.to_string(),
            "--num-classes".into(),
            args.num_classes.to_string(),
            "--threads".into(),
            env::rayon_threads().to_string(),
            "--device".into(),
            args.device.clone(),
        ];
        match self {
            Twin::Resnet => a.extend(["--image-size".into(), args.image_size.to_string()]),
            Twin::Bert => a.extend(["--seq-len".into(), args.seq_len.to_string()]),
        }
        a
    }
}

/// Checks that `python` imports what the twins need; returns its torch version.
fn check_python(python: &str, twins: &[Twin]) -> Result<String> {
    let imports = if twins.contains(&Twin::Bert) { Twin::Bert.imports() } else { Twin::Resnet.imports() };
    let out = Command::new(python)
        .args(["-c", &format!("{imports}; print(torch.__version__)")])
        .output()
        .map_err(|e| anyhow::anyhow!("--vs-pytorch: cannot run `{python}` ({e}); {HOW_TO_GET_TORCH}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        bail!("--vs-pytorch: `{python}` cannot `{imports}` ({}); {HOW_TO_GET_TORCH}", why.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads a script's `--json` output: one object per model (`arch`, `train`, `infer` in
/// examples/s) after a header object without `arch`.
fn parse_script_output(stdout: &str, script: &str) -> Result<Vec<Measurement>> {
    let mut found = Vec::new();
    for (i, line) in stdout.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{script}: output line {} is not JSON: {line:?}", i + 1))?;
        let Some(arch) = v.get("arch") else { continue };
        let number = |key: &str| {
            v.get(key).and_then(|x| x.as_f64()).filter(|x| x.is_finite() && *x > 0.0).with_context(|| {
                format!("{script}: line {}: `{key}` is not a positive number: {line}", i + 1)
            })
        };
        let arch =
            arch.as_str().with_context(|| format!("{script}: line {}: `arch` is not a string", i + 1))?;
        found.push(Measurement { arch: arch.to_string(), train: number("train")?, infer: number("infer")? });
    }
    Ok(found)
}

/// Runs the script for one twin's `archs` (the script text on standard input).
fn run_script(python: &str, twin: Twin, archs: &[&str], args: &Args) -> Result<Vec<Measurement>> {
    let (script, text) = (SCRIPT, SCRIPT_TEXT);
    let mut child = Command::new(python)
        .arg("-")
        .args(twin.arguments(archs, args))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {script} with `{python}`"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .with_context(|| format!("sending {script} to `{python}`"))?;
    let out = child.wait_with_output().with_context(|| format!("waiting for {script}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!("{script} failed ({}): {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let found = parse_script_output(&String::from_utf8_lossy(&out.stdout), script)?;
    for arch in archs {
        ensure!(found.iter().any(|m| m.arch == *arch), "{script} printed no measurement of `{arch}`");
    }
    Ok(found)
}

/// `(busy, total)` CPU time of the whole machine so far, from the `cpu` line of `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// The share of the machine's CPU time other processes used over half a second (this one
/// sleeps meanwhile); `None` off Linux.
fn others_busy() -> Option<f64> {
    let (b0, t0) = cpu_times()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (b1, t1) = cpu_times()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// The median (mean of the two middle values for an even count).
fn median_of(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One kind of work (a model's training step or inference) over all rounds.
#[derive(Debug)]
struct Work {
    arch: String,
    phase: &'static str,
    batch: usize,
    /// Examples/s to the printed unit: tokens per sequence for text models, else 1.
    scale: f64,
    kd: Vec<f64>,
    torch: Vec<f64>,
}

/// What the table reports for one kind of work.
#[derive(Debug, PartialEq)]
struct Comparison {
    kd_median: f64,
    torch_median: f64,
    /// kd-bench's median over PyTorch's: above 1 means kd-bench is faster.
    ratio: f64,
    kd_faster: usize,
    rounds: usize,
}

fn compare(kd: &[f64], torch: &[f64]) -> Comparison {
    let (kd_median, torch_median) = (median_of(kd), median_of(torch));
    Comparison {
        kd_median,
        torch_median,
        ratio: kd_median / torch_median,
        kd_faster: kd.iter().zip(torch).filter(|(k, t)| k > t).count(),
        rounds: kd.len().min(torch.len()),
    }
}

fn rounds_text(values: &[f64], scale: f64) -> String {
    values.iter().map(|v| format!("{:.0}", v * scale)).collect::<Vec<_>>().join(" ")
}

pub(super) fn run(args: &Args, device: &Device) -> Result<()> {
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let mut groups: Vec<(Twin, Vec<&str>)> = Vec::new();
    for arch in &args.archs {
        let twin = Twin::of(arch).with_context(|| {
            format!("--vs-pytorch: `{arch}` has no PyTorch twin in benchmarks/perf/pytorch_step.py (resnetN, bert-LN); leave it out of --archs")
        })?;
        match groups.iter_mut().find(|(t, _)| *t == twin) {
            Some((_, archs)) => archs.push(arch),
            None => groups.push((twin, vec![arch])),
        }
    }
    let twins: Vec<Twin> = groups.iter().map(|(t, _)| *t).collect();
    let version = check_python(&args.python, &twins)?;
    if let Some(busy) = others_busy().filter(|b| *b > 0.1) {
        // Measured: a nice-19 training job on the other core cut PyTorch's ResNet-8 step from
        // 1200 to 13 examples/s (its OpenMP threads wait on each other), kd-bench's far less.
        eprintln!(
            "warning: the machine is not idle ({:.0}% of its CPU time was busy before the rounds); PyTorch's \
             OpenMP threads slow down many times over when another process shares the cores, so these rounds \
             favour kd-bench: stop other work and re-run for figures to quote",
            busy * 100.0
        );
    }
    println!(
        "PyTorch side: `{}`, torch {version}; {} alternating rounds (kd-bench first in odd rounds), each the median of {} repeats",
        args.python, args.rounds, args.repeats
    );
    let mut works: Vec<Work> = Vec::new();
    for arch in &args.archs {
        let (train_batch, eval_batch) = batches(arch, args);
        let scale = if is_text(arch) { args.seq_len as f64 } else { 1.0 };
        for (phase, batch) in [("train", train_batch), ("infer", eval_batch)] {
            works.push(Work { arch: arch.clone(), phase, batch, scale, kd: vec![], torch: vec![] });
        }
    }
    for round in 0..args.rounds {
        let mut kd = Vec::new();
        let mut torch = Vec::new();
        let mut kd_side = || -> Result<()> {
            for arch in &args.archs {
                kd.push(measure(arch, args, device)?);
            }
            Ok(())
        };
        let torch_side = |torch: &mut Vec<Measurement>| -> Result<()> {
            for (twin, archs) in &groups {
                torch.extend(run_script(&args.python, *twin, archs, args)?);
            }
            Ok(())
        };
        if round % 2 == 0 {
            kd_side()?;
            torch_side(&mut torch)?;
        } else {
            torch_side(&mut torch)?;
            kd_side()?;
        }
        let mut line = format!("round {}/{}:", round + 1, args.rounds);
        for w in &mut works {
            let pick = |ms: &[Measurement]| {
                let m = ms.iter().find(|m| m.arch == w.arch).expect("measured every arch");
                if w.phase == "train" {
                    m.train
                } else {
                    m.infer
                }
            };
            w.kd.push(pick(&kd));
            w.torch.push(pick(&torch));
            line += &format!(
                "  {} {} {:.0} vs {:.0}",
                w.arch,
                w.phase,
                w.kd.last().unwrap() * w.scale,
                w.torch.last().unwrap() * w.scale
            );
        }
        println!("{line}");
    }
    println!();
    println!(
        "cpu {} ({}), {} threads; kd-bench and PyTorch per round, then medians:",
        env::cpu_model(),
        env::cpu_features(),
        env::rayon_threads()
    );
    println!();
    println!("| work | batch | unit | kd-bench per round | PyTorch per round | kd-bench | PyTorch | ratio | rounds kd faster |");
    println!("|---|---:|---|---|---|---:|---:|---:|---:|");
    for w in &works {
        let c = compare(&w.kd, &w.torch);
        let unit = if w.scale == 1.0 { "examples/s" } else { "tokens/s" };
        println!(
            "| {} {} | {} | {} | {} | {} | {:.0} | {:.0} | **{:.2}×** | {} / {} |",
            w.arch,
            w.phase,
            w.batch,
            unit,
            rounds_text(&w.kd, w.scale),
            rounds_text(&w.torch, w.scale),
            c.kd_median * w.scale,
            c.torch_median * w.scale,
            c.ratio,
            c.kd_faster,
            c.rounds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_are_the_numbered_resnets_and_berts() {
        assert_eq!(Twin::of("resnet20"), Some(Twin::Resnet));
        assert_eq!(Twin::of("resnet110"), Some(Twin::Resnet));
        assert_eq!(Twin::of("bert-L2"), Some(Twin::Bert));
        for none in ["resnet32x4", "resnet", "wrn_40_2", "textcnn", "bert-L", "bert-L2-H256"] {
            assert_eq!(Twin::of(none), None, "{none}");
        }
    }

    #[test]
    fn medians_ratio_and_rounds_won() {
        assert_eq!(median_of(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_of(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let c = compare(&[300.0, 330.0, 310.0, 280.0], &[200.0, 340.0, 250.0, 260.0]);
        assert_eq!(c.kd_median, 305.0);
        assert_eq!(c.torch_median, 255.0);
        assert!((c.ratio - 305.0 / 255.0).abs() < 1e-12);
        assert_eq!((c.kd_faster, c.rounds), (3, 4));
    }

    #[test]
    fn script_output_is_read_and_bad_lines_are_named() {
        let out = "{\"torch\": \"2.15.0\", \"threads\": 2}\n{\"arch\": \"resnet20\", \"train\": 390.5, \"infer\": 1200}\n\n";
        let m = parse_script_output(out, "pytorch_step.py").unwrap();
        assert_eq!(m, vec![Measurement { arch: "resnet20".into(), train: 390.5, infer: 1200.0 }]);
        let e = parse_script_output("torch 2.15\n", "pytorch_step.py").unwrap_err();
        assert!(format!("{e:#}").contains("pytorch_step.py: output line 1 is not JSON"), "{e:#}");
        let e = parse_script_output("{\"arch\": \"resnet20\", \"train\": 0, \"infer\": 1}\n", "s.py")
            .unwrap_err();
        assert!(format!("{e:#}").contains("`train` is not a positive number"), "{e:#}");
    }

    #[test]
    fn the_scripts_get_kd_bench_s_batches_and_shapes() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: Args,
        }
        let args = <Cli as clap::Parser>::parse_from([
            "kd",
            "--text-train-batch",
            "16",
            "--seq-len",
            "128",
            "--repeats",
            "3",
        ])
        .bench;
        let bert = Twin::Bert.arguments(&["bert-L2", "bert-L6"], &args).join(" ");
        assert!(
            bert.starts_with("--json --archs bert-L2,bert-L6 --train-batch 16 --eval-batch 128 --repeats 3"),
            "{bert}"
        );
        assert!(bert.ends_with("--seq-len 128"), "{bert}");
        let resnet = Twin::Resnet.arguments(&["resnet20"], &args).join(" ");
        assert!(
            resnet.contains("--train-batch 128 --eval-batch 256") && resnet.ends_with("--image-size 32"),
            "{resnet}"
        );
        for flag in bert.split(' ').chain(resnet.split(' ')).filter(|a| a.starts_with("--")) {
            assert!(SCRIPT_TEXT.contains(&format!("\"{flag}\"")), "{SCRIPT} takes {flag}");
        }
    }
}
