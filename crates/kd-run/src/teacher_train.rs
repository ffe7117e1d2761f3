//! The teacher stage of a recipe whose teacher is trained, not downloaded
//! (`teacher.train = { epochs, seed, ... }`): train it once on the recipe's training data, save
//! it under the kd-bench cache keyed by the hash of everything that determines its weights, and
//! reuse it in every later run, variant and seed. Changing any of those fields retrains it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use kd_core::hash::{config_hash, short};
use kd_core::plain::PlainTraining;
use kd_core::recipe::{Recipe, TeacherSection, TeacherTraining};
use kd_core::seed::derive_seed;

use crate::data::{Loader, Split};
use crate::models;
use crate::stage_cache::CachedModel;
use crate::train::{fit, Fit};

/// A trained teacher in the cache: its weights file and the hash that names it.
pub struct TrainedTeacher {
    pub path: PathBuf,
    /// SHA-256 of the teacher's training configuration (the `teacher_hash` of its rows).
    pub hash: String,
}

/// What determines a trained teacher's weights: architecture, training settings, seed and
/// the training data (the evaluation split is not among them).
pub fn teacher_config(t: &TeacherSection, spec: &TeacherTraining, recipe: &Recipe) -> serde_json::Value {
    let d = &recipe.data;
    let tr = &recipe.train;
    serde_json::json!({
        "stage": "teacher",
        "arch": t.arch,
        "epochs": spec.epochs,
        "seed": spec.seed,
        "batch_size": spec.batch_size.unwrap_or(tr.batch_size),
        "optimizer": spec.optimizer.as_ref().unwrap_or(&tr.optimizer),
        "lr_schedule": spec.lr_schedule.as_ref().unwrap_or(&tr.lr_schedule),
        "drop_last": tr.drop_last,
        "data": {
            "hub": d.hub, "revision": d.revision, "config": d.config, "train_split": d.train_split,
            "image_column": d.image_column, "label_column": d.label_column,
            "num_classes": d.num_classes, "train_limit": d.train_limit, "subset_seed": d.subset_seed,
            "normalize": d.normalize, "augment": d.augment,
        },
    })
}

/// The cached teacher for `t`, training it first when the cache does not hold it. A killed
/// training resumes from its epoch checkpoint beside the cache entry.
pub fn ensure_trained(
    cache_dir: &Path,
    t: &TeacherSection,
    spec: &TeacherTraining,
    recipe: &Recipe,
    train: &Split,
    eval: &Loader,
    device: &Device,
) -> Result<TrainedTeacher> {
    let hash = config_hash(&teacher_config(t, spec, recipe))?;
    let cached = CachedModel::new(&cache_dir.join("teachers"), &format!("{}-{}", t.arch, short(&hash)));
    let path = cached.path.clone();
    if cached.is_cached() {
        eprintln!("teacher {} (trained, config {}): reusing {}", t.arch, short(&hash), path.display());
        return Ok(TrainedTeacher { path, hash });
    }
    let d = &recipe.data;
    let tr = &recipe.train;
    let options = models::input_options(&train.dataset);
    let built =
        models::build_with(&t.arch, d.num_classes, derive_seed(spec.seed, "init/teacher"), options, device)?;
    let mut method = PlainTraining::new(recipe.experiment.method.clone(), built.model.clone(), 0.0);
    let optimizer_spec = spec.optimizer.clone().unwrap_or_else(|| tr.optimizer.clone());
    let lr_schedule = spec.lr_schedule.clone().unwrap_or_else(|| tr.lr_schedule.clone());
    let batch = spec.batch_size.unwrap_or(tr.batch_size);
    let loader = Loader::train(train, d, batch, tr.drop_last, derive_seed(spec.seed, "teacher/data"), device);
    eprintln!(
        "teacher {} (trained, config {}): not in the cache, training it for {} epochs on {} examples",
        t.arch,
        short(&hash),
        spec.epochs,
        train.indices.len()
    );
    let t0 = Instant::now();
    let entries = crate::progress::as_role(kd_core::Method::eval_entries(&method), "teacher");
    cached.train(|ckpt| {
        fit(Fit {
            method: &mut method,
            state: &built.state,
            trainable: built.trainable.clone(),
            optimizer: &optimizer_spec,
            epochs: spec.epochs,
            lr_schedule: &lr_schedule,
            checkpoint: ckpt,
            run_id: &format!("teacher/{}/{hash}", t.arch),
            train_data: &loader,
            eval_data: eval,
            label: &format!("teacher {}", t.arch),
            metrics: kd_core::metric::top1_top5(),
            entries,
        })
        .with_context(|| format!("training teacher {} (checkpoint {})", t.arch, ckpt.display()))?;
        models::save_final(&built, &path, recipe, &hash)
    })?;
    eprintln!("teacher {}: trained in {:.1}s → {}", t.arch, t0.elapsed().as_secs_f64(), path.display());
    Ok(TrainedTeacher { path, hash })
}
