//! Recipes: profiles override fields, unknown keys are errors naming file, key and line, and
//! the config hash changes with every field but not with the seed list.

use std::path::PathBuf;

use kd_core::hash::config_hash;
use kd_core::recipe::RecipeFile;

const BASE: &str = r#"
[experiment]
name = "t"
method = "vanilla"
variants = ["plain", "kd"]
cite = ["hinton2015distilling"]
seeds = [0, 1, 2]

[data]
hub = "uoft-cs/cifar10"
train_split = "train"
eval_split = "test"
image_column = "img"
label_column = "label"
num_classes = 10
normalize = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }

[student]
arch = "resnet20"

[train]
epochs = 240
batch_size = 64
optimizer = { kind = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
lr_schedule = { kind = "multistep", milestones = [150, 180, 210], gamma = 0.1 }

[distill]
temperature = 4.0
alpha = 0.9

[profiles.cpu]
train.epochs = 8
data.train_limit = 1000

[profiles.smoke]
train.epochs = 1
"#;

fn parse(text: &str) -> kd_core::Result<RecipeFile> {
    RecipeFile::parse(PathBuf::from("benchmarks/t.toml"), text.to_string())
}

#[test]
fn profiles_override_only_their_fields() {
    let f = parse(BASE).unwrap();
    let base = f.resolve(None).unwrap();
    let cpu = f.resolve(Some("cpu")).unwrap();
    assert_eq!(base.train.epochs, 240);
    assert_eq!(cpu.train.epochs, 8);
    assert_eq!(cpu.data.train_limit, Some(1000));
    assert_eq!(cpu.train.batch_size, 64, "untouched fields keep the base value");
    assert_eq!(cpu.data.revision, "main", "defaults apply");
    assert_eq!(cpu.distill.get("alpha").and_then(|v| v.as_float()), Some(0.9));
}

#[test]
fn unknown_key_in_base_names_file_key_and_line() {
    let text = BASE.replace("batch_size = 64\n", "batch_size = 64\nbatchsize = 32\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("benchmarks/t.toml"), "{e}");
    assert!(e.contains("batchsize"), "{e}");
    let line = text.lines().position(|l| l.starts_with("batchsize")).unwrap() + 1;
    assert!(e.contains(&format!("line {line}")), "{e}");
}

#[test]
fn unknown_key_in_a_profile_is_caught_even_when_another_profile_is_used() {
    let text = BASE.replace("[profiles.smoke]\n", "[profiles.smoke]\ntrain.epohcs = 2\n");
    let e = parse(&text).unwrap_err().to_string();
    assert!(e.contains("profile `smoke`") && e.contains("epohcs"), "{e}");
    let line = text.lines().position(|l| l.starts_with("train.epohcs")).unwrap() + 1;
    assert!(e.contains(&format!("line {line}")), "{e}");
}

#[test]
fn wrong_type_and_missing_profile_are_errors() {
    let e = parse(&BASE.replace("epochs = 240", "epochs = \"many\"")).unwrap_err().to_string();
    assert!(e.contains("train.epochs"), "{e}");
    let f = parse(BASE).unwrap();
    let e = f.resolve(Some("gpu")).unwrap_err().to_string();
    assert!(e.contains("no profile `gpu`") && e.contains("cpu") && e.contains("smoke"), "{e}");
}

#[test]
fn config_hash_tracks_every_field() {
    let f = parse(BASE).unwrap();
    let a = f.resolve(Some("cpu")).unwrap();
    let b = f.resolve(Some("cpu")).unwrap();
    assert_eq!(config_hash(&a).unwrap(), config_hash(&b).unwrap(), "deterministic");
    let smoke = f.resolve(Some("smoke")).unwrap();
    assert_ne!(config_hash(&a).unwrap(), config_hash(&smoke).unwrap());
    let t2 =
        parse(&BASE.replace("temperature = 4.0", "temperature = 2.0")).unwrap().resolve(Some("cpu")).unwrap();
    assert_ne!(config_hash(&a).unwrap(), config_hash(&t2).unwrap());
}

#[test]
fn overrides_apply_dotted_keys_and_reject_unknown_ones() {
    let f = parse(BASE).unwrap();
    let r = f.resolve(Some("cpu")).unwrap();
    let o = r
        .with_overrides(
            &f.path,
            &[
                ("train.epochs".into(), toml::Value::Integer(3)),
                ("distill.temperature".into(), toml::Value::Float(2.0)),
            ],
        )
        .unwrap();
    assert_eq!(o.train.epochs, 3);
    assert_eq!(o.distill.get("temperature").and_then(|v| v.as_float()), Some(2.0));
    let e = r
        .with_overrides(&f.path, &[("train.epoks".into(), toml::Value::Integer(3))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoks"), "{e}");
}

#[test]
fn a_profile_table_with_a_kind_replaces_the_base_choice_whole() {
    let text =
        BASE.replace("[profiles.smoke]\n", "[profiles.smoke]\ntrain.lr_schedule = { kind = \"cosine\" }\n");
    let r = parse(&text).unwrap().resolve(Some("smoke")).unwrap();
    assert_eq!(
        r.train.lr_schedule,
        kd_core::schedule::LrSchedule::Cosine { min_lr: 0.0, warmup_epochs: 0.0 }
    );
}

/// New recipe fields must default without changing the hash of configurations that do not use
/// them: a hash in a paper has to keep pointing at the same configuration.
#[test]
fn config_hash_of_a_fixed_recipe_is_pinned() {
    let r = parse(BASE).unwrap().resolve(Some("cpu")).unwrap();
    let h = config_hash(&r).unwrap();
    assert_eq!(
        h, PINNED,
        "the canonical form changed; if deliberate, update PINNED and say so in the commit"
    );
}
const PINNED: &str = "0336253cd9f0b92f6e68d000899f1e9bf48840e78395559c9847824b3d9573d5";
