//! Recipe validation refuses, before any data is read, what would write outside the project,
//! train on nothing or feed an optimiser nonsense; each message names the file, the key and
//! (from a file) its line. Every committed recipe stays valid in every profile.

use std::path::{Path, PathBuf};

use kd_core::recipe::RecipeFile;

const BASE: &str = r#"[experiment]
name = "t"
method = "vanilla"
variants = ["plain", "kd"]
seeds = [0, 1]

[data]
hub = "uoft-cs/cifar10"
revision = "main"
train_split = "train"
eval_split = "test"
image_column = "img"
label_column = "label"
num_classes = 10

[teacher]
arch = "resnet56"
checkpoint = { url = "https://example.org/w/resnet56.th", sha256 = "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367" }

[student]
arch = "resnet20"

[train]
epochs = 240
batch_size = 64
optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
lr_schedule = { kind = "multistep", milestones = [150, 180, 210], gamma = 0.1 }

[profiles.cpu]
train.epochs = 8
data.train_limit = 1000

[profiles.smoke]
train.epochs = 1
"#;

const FILE: &str = "benchmarks/t.toml";

fn parse(text: &str) -> kd_core::Result<RecipeFile> {
    RecipeFile::parse(PathBuf::from(FILE), text.to_string())
}

/// 1-based line of the first line of `text` that contains `part`.
fn line(text: &str, part: &str) -> usize {
    text.lines().position(|l| l.contains(part)).unwrap_or_else(|| panic!("no line {part}")) + 1
}

/// `from` replaced by `to` must be refused naming the file, `key` and the line of `to`'s last line.
#[track_caller]
fn refused(from: &str, to: &str, key: &str) -> String {
    assert!(BASE.contains(from), "BASE lacks {from}");
    let text = BASE.replacen(from, to, 1);
    let e = match parse(&text) {
        Ok(_) => panic!("accepted `{to}`"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains(FILE), "names the file: {e}");
    assert!(e.contains(&format!("key `{key}`")), "names `{key}`: {e}");
    let last = to.lines().last().unwrap().trim_start();
    assert!(e.contains(&format!("line {}", line(&text, last))), "line of `{last}`: {e}");
    e
}

#[test]
fn the_base_recipe_is_valid() {
    let f = parse(BASE).unwrap();
    for p in [None, Some("cpu"), Some("smoke")] {
        f.resolve(p).unwrap();
    }
}

#[test]
fn experiment_name_must_be_a_plain_name_equal_to_the_file_stem() {
    for bad in ["/tmp/x", "../../../tmp/y", "a/b", "T", "", ".hidden", "t\\u"] {
        let e = refused("name = \"t\"", &format!("name = {bad:?}"), "experiment.name");
        assert!(e.contains("plain name"), "{e}");
    }
    let e = refused("name = \"t\"", "name = \"other\"", "experiment.name");
    assert!(e.contains("must equal the recipe file's name `t`"), "{e}");
    // A profile may not rename the experiment either; the error points at the profile's line.
    let text = BASE.replace("[profiles.smoke]\n", "[profiles.smoke]\nexperiment.name = \"../x\"\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("profile `smoke`") && e.contains("key `experiment.name`"), "{e}");
    assert!(e.contains(&format!("line {}", line(&text, "experiment.name = \"../x\""))), "{e}");
}

#[test]
fn path_like_values_of_fields_that_become_file_names_are_refused() {
    refused("variants = [\"plain\", \"kd\"]", "variants = [\"plain\", \"../kd\"]", "experiment.variants[1]");
    refused("variants = [\"plain\", \"kd\"]", "variants = [\"plain\", \"plain\"]", "experiment.variants[1]");
    refused("method = \"vanilla\"", "method = \"/tmp/m\"", "experiment.method");
    refused("arch = \"resnet20\"", "arch = \"a/b\"", "student.arch");
    refused("arch = \"resnet56\"", "arch = \"..\"", "teacher.arch");
    refused("revision = \"main\"", "revision = \"../../../tmp/y\"", "data.revision");
    refused("revision = \"main\"", "revision = \"/tmp/x\"", "data.revision");
    refused("hub = \"uoft-cs/cifar10\"", "hub = \"/tmp/x\"", "data.hub");
    refused("hub = \"uoft-cs/cifar10\"", "hub = \"a/../b\"", "data.hub");
    refused("train_split = \"train\"", "train_split = \"../train\"", "data.train_split");
    let url = "https://example.org/w/resnet56.th";
    let e = refused(url, "https://example.org/w/..", "teacher.checkpoint.url");
    assert!(e.contains("file name"), "{e}");
    refused(url, "file:///etc/passwd", "teacher.checkpoint.url");
    // A branch path is still a revision.
    parse(&BASE.replace("revision = \"main\"", "revision = \"refs/pr/1\"")).unwrap();
}

#[test]
fn empty_budgets_are_refused_naming_the_key() {
    refused("epochs = 240", "epochs = 0", "train.epochs");
    refused("batch_size = 64", "batch_size = 0", "train.batch_size");
    refused("batch_size = 64", "batch_size = 64\neval_batch_size = 0", "train.eval_batch_size");
    refused("num_classes = 10", "num_classes = 10\ntrain_limit = 0", "data.train_limit");
    refused("num_classes = 10", "num_classes = 10\neval_limit = 0", "data.eval_limit");
    // Through a profile: the profile and its line are named.
    for (set, key) in [
        ("train.epochs = 0", "train.epochs"),
        ("data.train_limit = 0", "data.train_limit"),
        ("data.eval_limit = 0", "data.eval_limit"),
        ("train.batch_size = 0", "train.batch_size"),
    ] {
        let text =
            BASE.replace("[profiles.smoke]\ntrain.epochs = 1\n", &format!("[profiles.smoke]\n{set}\n"));
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains(FILE) && e.contains("profile `smoke`") && e.contains(&format!("key `{key}`")),
            "{e}"
        );
        assert!(e.contains(&format!("line {}", line(&text, set))), "{e}");
    }
}

#[test]
fn overrides_are_validated_like_the_file() {
    let f = parse(BASE).unwrap();
    let r = f.resolve(Some("cpu")).unwrap();
    for (key, value) in [
        ("train.epochs", toml::Value::Integer(0)),
        ("data.train_limit", toml::Value::Integer(0)),
        ("data.eval_limit", toml::Value::Integer(0)),
        ("train.eval_batch_size", toml::Value::Integer(0)),
        ("train.optimizer.lr", toml::Value::Float(f64::NAN)),
        ("train.optimizer.momentum", toml::Value::Float(1.0)),
        ("train.lr_schedule.gamma", toml::Value::Float(-0.1)),
        ("experiment.name", toml::Value::String("/tmp/x".into())),
        ("student.arch", toml::Value::String("../x".into())),
    ] {
        let e = r.with_overrides(&f.path, &[(key.into(), value.clone())]).unwrap_err().to_string();
        assert!(e.contains(FILE), "{e}");
        assert!(e.contains(&format!("key `{key}` (set by the override `{key}={value}`)")), "{e}");
    }
    assert_eq!(r.with_overrides(&f.path, &[]).unwrap(), r);
}

#[test]
fn optimiser_values_are_refused_naming_the_key() {
    let sgd = "optimizer = { kind = \"sgd\", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }";
    let with = |lr: &str, m: &str, wd: &str| {
        format!("optimizer = {{ kind = \"sgd\", lr = {lr}, momentum = {m}, weight_decay = {wd} }}")
    };
    for lr in ["nan", "-0.1", "0.0", "inf"] {
        refused(sgd, &with(lr, "0.9", "5e-4"), "train.optimizer.lr");
    }
    for m in ["-0.1", "1.0", "1.5", "nan"] {
        refused(sgd, &with("0.05", m, "5e-4"), "train.optimizer.momentum");
    }
    for wd in ["nan", "-1e-4", "inf"] {
        refused(sgd, &with("0.05", "0.9", wd), "train.optimizer.weight_decay");
    }
    let nesterov = "optimizer = { kind = \"sgd\", lr = 0.05, nesterov = true }";
    refused(sgd, nesterov, "train.optimizer.nesterov");
    let adamw = |b1: &str, b2: &str, eps: &str| {
        format!("optimizer = {{ kind = \"adamw\", lr = 1e-3, beta1 = {b1}, beta2 = {b2}, eps = {eps} }}")
    };
    parse(&BASE.replace(sgd, &adamw("0.9", "0.999", "1e-8"))).unwrap();
    for (b1, b2, eps, key) in [
        ("1.0", "0.999", "1e-8", "beta1"),
        ("-0.1", "0.999", "1e-8", "beta1"),
        ("nan", "0.999", "1e-8", "beta1"),
        ("0.9", "1.0", "1e-8", "beta2"),
        ("0.9", "-0.5", "1e-8", "beta2"),
        ("0.9", "0.999", "0.0", "eps"),
        ("0.9", "0.999", "-1e-8", "eps"),
        ("0.9", "0.999", "nan", "eps"),
    ] {
        refused(sgd, &adamw(b1, b2, eps), &format!("train.optimizer.{key}"));
    }
}

#[test]
fn schedule_values_are_refused_naming_the_key() {
    let multistep = "lr_schedule = { kind = \"multistep\", milestones = [150, 180, 210], gamma = 0.1 }";
    for g in ["0.0", "-0.1", "nan", "inf"] {
        let to = format!("lr_schedule = {{ kind = \"multistep\", milestones = [150], gamma = {g} }}");
        refused(multistep, &to, "train.lr_schedule.gamma");
    }
    for w in ["-1.0", "nan", "inf"] {
        let to = format!("lr_schedule = {{ kind = \"cosine\", warmup_epochs = {w} }}");
        refused(multistep, &to, "train.lr_schedule.warmup_epochs");
    }
    for m in ["-1e-3", "nan"] {
        let to = format!("lr_schedule = {{ kind = \"cosine-per-epoch\", min_lr = {m} }}");
        refused(multistep, &to, "train.lr_schedule.min_lr");
    }
}

#[test]
fn a_recipe_trained_teacher_is_validated_with_its_own_keys() {
    let ckpt = "checkpoint = { url = \"https://example.org/w/resnet56.th\", sha256 = \"4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367\" }";
    let train = |t: &str| format!("train = {{ {t} }}");
    parse(&BASE.replace(ckpt, &train("epochs = 2, seed = 0"))).unwrap();
    refused(ckpt, &train("epochs = 0"), "teacher.train.epochs");
    refused(ckpt, &train("epochs = 2, batch_size = 0"), "teacher.train.batch_size");
    refused(
        ckpt,
        &train("epochs = 2, optimizer = { kind = \"sgd\", lr = -1.0 }"),
        "teacher.train.optimizer.lr",
    );
    refused(
        ckpt,
        &train("epochs = 2, lr_schedule = { kind = \"multistep\", milestones = [1], gamma = nan }"),
        "teacher.train.lr_schedule.gamma",
    );
}

#[test]
fn other_values_that_would_fail_late_are_refused_up_front() {
    let norm = "num_classes = 10\nnormalize = { mean = [0.5, 0.5, 0.5], std = [0.25, nan, 0.25] }";
    refused("num_classes = 10", norm, "data.normalize.std[1]");
    refused("num_classes = 10", "num_classes = 10\nresize = [0, 32]", "data.resize[0]");
    refused("seeds = [0, 1]", "seeds = [0, 0]", "experiment.seeds[1]");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_committed_recipe_is_valid_in_every_profile() {
    let mut n = 0;
    for entry in std::fs::read_dir(workspace_root().join("benchmarks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let f = RecipeFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!f.profiles.is_empty(), "{}", path.display());
        for p in f.profiles.keys() {
            let r = f.resolve(Some(p)).unwrap_or_else(|e| panic!("{e}"));
            r.with_overrides(&f.path, &[]).unwrap_or_else(|e| panic!("{e}"));
        }
        n += 1;
    }
    assert!(n >= 10, "found {n} recipes");
}

/// A comparison of several methods: `methods` instead of `method`, one `[distill.<method>]`
/// table per method; each method sees its own table as `[distill]`.
#[test]
fn a_comparison_lists_its_methods_and_gives_each_its_own_distill_table() {
    let zoo = BASE.replace("method = \"vanilla\"", "methods = [\"vanilla\", \"at\"]").replace(
        "[profiles.cpu]",
        "[distill.vanilla]\nalpha = 0.9\n\n[distill.at]\nbeta = 10.0\n\n[profiles.cpu]",
    );
    let r = parse(&zoo).unwrap().resolve(Some("cpu")).unwrap();
    assert_eq!(r.method_names(), ["vanilla", "at"]);
    let at = r.for_method("at");
    assert_eq!(at.experiment.method, "at");
    assert!(at.experiment.methods.is_empty());
    assert_eq!(at.distill.get("beta").and_then(|v| v.as_float()), Some(10.0));
    assert!(at.distill.get("alpha").is_none(), "vanilla's keys stay vanilla's");
    // A one-method recipe is its own view, and serialises as before (no `methods` key).
    let one = parse(BASE).unwrap().resolve(None).unwrap();
    assert_eq!(one.for_method("vanilla"), one);
    assert!(!kd_core::hash::canonical_json(&one).unwrap().contains("methods"));

    let err = |text: &str| parse(text).unwrap_err().to_string();
    let e = err(&zoo.replace("[distill.at]", "[distill.dkd]"));
    assert!(e.contains("distill.dkd") && e.contains("vanilla, at"), "{e}");
    let e = err(&zoo.replace("methods = [", "method = \"vanilla\"\nmethods = ["));
    assert!(e.contains("experiment.methods") && e.contains("not both"), "{e}");
    let e = err(&BASE.replace("method = \"vanilla\"\n", ""));
    assert!(e.contains("experiment.method") && e.contains("missing"), "{e}");
    let e = err(&zoo.replace("[\"vanilla\", \"at\"]", "[\"at\", \"at\"]"));
    assert!(e.contains("experiment.methods"), "{e}");
}

/// `[published]`: a cited paper's numbers for the teacher, `plain` and variants; not hashed.
#[test]
fn published_numbers_name_a_cited_paper_and_known_lines_and_are_not_configuration() {
    let with = |table: &str| {
        format!(
            "{}\n[published]\n{table}\n",
            BASE.replace("seeds = [0, 1]", "seeds = [0, 1]\ncite = [\"tian2020crd\"]")
        )
    };
    let ok =
        with("source = \"tian2020crd\"\nsetting = \"Table 1\"\nvalues = { teacher = 72.34, kd = 70.66 }");
    let r = parse(&ok).unwrap().resolve(Some("cpu")).unwrap();
    assert_eq!(r.published.as_ref().unwrap().values["kd"], 70.66);
    assert!(!kd_core::hash::canonical_json(&r).unwrap().contains("70.66"), "never hashed");
    let err = |t: &str| parse(&with(t)).unwrap_err().to_string();
    let e = err("source = \"other2020\"\nsetting = \"x\"\nvalues = { kd = 1.0 }");
    assert!(e.contains("published.source") && e.contains("experiment.cite"), "{e}");
    let e = err("source = \"tian2020crd\"\nsetting = \"x\"\nvalues = { dkd = 1.0 }");
    assert!(e.contains("published.values.dkd") && e.contains("plain, kd"), "{e}");
    let e = err("source = \"tian2020crd\"\nsetting = \"x\"\nvalues = { \"dkd exit-1\" = 1.0 }");
    assert!(e.contains("published.values.dkd exit-1"), "{e}");
    let e = err("source = \"tian2020crd\"\nsetting = \"x\"\nvalues = { \"kd a b\" = 1.0 }");
    assert!(e.contains("<variant> <role>"), "{e}");
    // A run with several models names its line by variant and role.
    let roles = with("source = \"tian2020crd\"\nsetting = \"x\"\nvalues = { \"kd peer-1\" = 71.19 }");
    let r = parse(&roles).unwrap().resolve(Some("cpu")).unwrap();
    assert_eq!(r.published.as_ref().unwrap().values["kd peer-1"], 71.19);
    let e = err("source = \"tian2020crd\"\nsetting = \"x\"\nvalues = { kd = nan }");
    assert!(e.contains("published.values.kd") && e.contains("finite"), "{e}");
}
