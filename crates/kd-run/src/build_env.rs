//! What an image-classification run offers a method's build ([`BuildEnv`]): fresh models for
//! the task's images, the recipe's pretrained teachers, and stages (TAKD's assistants) trained
//! once per key and cached as `<cache>/assistants/<key>.safetensors`.
//!
//! A stage is written atomically once its training ends; the epoch checkpoint beside it makes
//! a killed stage resume. Every later run whose key matches loads the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use kd_core::checkpoint;
use kd_core::recipe::Recipe;
use kd_core::registry::{BuildEnv, BuiltModel, StageSpec, TeacherInfo, TrainSet, TrainedStage};
use kd_core::seed::derive_seed;
use kd_core::teacher::TeacherLogits;
use kd_core::{Classifier, Method};

use crate::data::{Loader, Split};
use crate::env;
use crate::models;
use crate::stage_cache::CachedModel;
use crate::teacher::Teacher;
use crate::train::{fit, Fit};

const META_KEY: &str = "kd.takd.key";

/// One run's build environment on an image task.
pub struct ImageBuildEnv<'a> {
    pub recipe: &'a Recipe,
    pub seed: u64,
    pub device: &'a Device,
    pub teachers: &'a [Teacher],
    /// Project root (the kd-bench cache lives under it unless `KD_CACHE_DIR` says otherwise).
    pub root: &'a Path,
    /// The run's training data and evaluation batches (stages train on the same data).
    pub train_split: &'a Split,
    pub eval_loader: &'a Loader,
}

/// kd-core's error for a pipeline error, keeping its whole chain of context.
pub(crate) fn core_error(e: anyhow::Error) -> kd_core::Error {
    kd_core::Error::Msg(format!("{e:#}"))
}

impl BuildEnv for ImageBuildEnv<'_> {
    fn recipe(&self) -> &Recipe {
        self.recipe
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn device(&self) -> &Device {
        self.device
    }

    fn image_size(&self) -> Option<usize> {
        Some(models::input_options(&self.train_split.dataset).input_size)
    }

    fn model(&self, arch: &str, purpose: &str) -> kd_core::Result<BuiltModel> {
        let options = models::input_options(&self.train_split.dataset);
        let seed = derive_seed(self.seed, purpose);
        models::build_with(arch, self.recipe.data.num_classes, seed, options, self.device).map_err(core_error)
    }

    fn teachers(&self) -> Vec<TeacherInfo> {
        let sections = self.recipe.teacher_sections();
        self.teachers
            .iter()
            .map(|t| TeacherInfo {
                arch: t.arch.clone(),
                sha256: t.hash.clone(),
                soft_label_cache: sections
                    .iter()
                    .find(|s| s.arch == t.arch)
                    .is_some_and(|s| s.soft_label_cache),
            })
            .collect()
    }

    fn sample_inputs(&self, n: usize) -> kd_core::Result<candle_core::Tensor> {
        use kd_core::trainer::BatchSource;
        let batch = self
            .eval_loader
            .epoch(0)
            .next()
            .ok_or_else(|| kd_core::Error::Msg("the evaluation split is empty".into()))??;
        let n = n.min(batch.len()).max(1);
        Ok(batch.inputs.narrow(0, 0, n)?)
    }

    fn teacher(&self, index: usize) -> kd_core::Result<Box<dyn TeacherLogits>> {
        let t = self.teachers.get(index).ok_or_else(|| {
            kd_core::Error::Msg(format!("teacher {index} requested; the run loaded {}", self.teachers.len()))
        })?;
        t.logits_source().map_err(core_error)
    }

    fn train_stage(
        &self,
        stage: &StageSpec,
        make: &mut dyn FnMut(&BuiltModel) -> kd_core::Result<Box<dyn Method>>,
    ) -> kd_core::Result<TrainedStage> {
        self.stage(stage, make).map_err(core_error)
    }

    /// The run's training subset in its split order (`Split::indices`, fixed by
    /// `data.subset_seed`); ids are dataset positions, as the loader puts them in batches.
    fn train_set(&self) -> kd_core::Result<TrainSet> {
        let ds = &self.train_split.dataset;
        let mut example_ids = Vec::with_capacity(self.train_split.indices.len());
        let mut labels = Vec::with_capacity(self.train_split.indices.len());
        for &i in self.train_split.indices.iter() {
            let (Ok(id), Some(&label)) = (u32::try_from(i), ds.labels.get(i)) else {
                return Err(kd_core::Error::Msg(format!(
                    "training example {i} is out of range of {} split ({} examples)",
                    ds.repo,
                    ds.labels.len()
                )));
            };
            example_ids.push(id);
            labels.push(label);
        }
        Ok(TrainSet { example_ids, labels: Some(labels) })
    }
}

impl ImageBuildEnv<'_> {
    fn stage(
        &self,
        stage: &StageSpec,
        make: &mut dyn FnMut(&BuiltModel) -> kd_core::Result<Box<dyn Method>>,
    ) -> Result<TrainedStage> {
        let (r, role, arch, key) = (self.recipe, stage.role, stage.arch, stage.key);
        let cached = CachedModel::new(&env::cache_dir(self.root).join("assistants"), key);
        let path = cached.path.clone();
        let reused = cached.is_cached();
        if reused {
            eprintln!("{role} {arch} seed {}: reusing cached assistant {}", self.seed, path.display());
        } else {
            self.train(stage, make, &cached)?;
            for t in self.teachers {
                t.after_run()?;
            }
        }
        let (_, meta) = checkpoint::load_checkpoint(&path)?;
        if meta.get(META_KEY).map(String::as_str) != Some(key) {
            bail!("cached assistant {} does not record key {key}; remove it to retrain", path.display());
        }
        let top1: f64 = meta.get("kd.takd.top1").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let model: Arc<dyn Classifier> = Arc::from(
            kd_models::load_frozen_model(
                arch,
                r.data.num_classes,
                kd_models::BuildOptions::default(),
                &path,
                self.device,
            )
            .with_context(|| format!("loading {role} {arch} from {}", path.display()))?,
        );
        if reused {
            eprintln!("{role} {arch}: top1 {top1:.2} (when trained)");
        }
        Ok(TrainedStage { model, path, top1, reused })
    }

    fn train(
        &self,
        stage: &StageSpec,
        make: &mut dyn FnMut(&BuiltModel) -> kd_core::Result<Box<dyn Method>>,
        cached: &CachedModel,
    ) -> Result<()> {
        let (r, role, arch, key) = (self.recipe, stage.role, stage.arch, stage.key);
        let built = models::build(arch, r.data.num_classes, derive_seed(self.seed, stage.init), self.device)?;
        let mut method = make(&built)?;
        eprintln!("{role} {arch} seed {}: training, key {}", self.seed, kd_core::hash::short(key));
        let loader = Loader::train(
            self.train_split,
            &r.data,
            r.train.batch_size,
            r.train.drop_last,
            derive_seed(self.seed, stage.data),
            self.device,
        );
        let t0 = Instant::now();
        let entries = crate::progress::as_role(method.eval_entries(), role);
        let path = &cached.path;
        let mut top1 = f64::NAN;
        cached.train(|ckpt| {
            let report = fit(Fit {
                method: method.as_mut(),
                state: &built.state,
                trainable: built.trainable.clone(),
                optimizer: &r.train.optimizer,
                epochs: r.train.epochs,
                lr_schedule: &r.train.lr_schedule,
                checkpoint: ckpt,
                run_id: &format!("takd-assistant/{key}"),
                train_data: &loader,
                eval_data: self.eval_loader,
                label: &format!("{role} s{}", self.seed),
                metrics: kd_core::metric::top1_top5(),
                entries,
            })
            .with_context(|| format!("training {role} {arch} (checkpoint {})", ckpt.display()))?;
            let (last, best, best_epoch) =
                report.summary(0, "top1").ok_or_else(|| anyhow!("{role} {arch}: no evaluation recorded"))?;
            let tensors: Vec<(String, candle_core::Tensor)> =
                built.state.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            let mut meta = BTreeMap::new();
            // What `kd eval` reads, as models::save_final writes it.
            meta.insert("kd.arch".to_string(), arch.to_string());
            meta.insert("kd.num_classes".to_string(), r.data.num_classes.to_string());
            meta.insert("kd.normalize.mean".to_string(), serde_json::to_string(&r.data.normalize.mean)?);
            meta.insert("kd.normalize.std".to_string(), serde_json::to_string(&r.data.normalize.std)?);
            meta.insert("kd.dataset".to_string(), r.data.hub.clone());
            meta.insert(META_KEY.to_string(), key.to_string());
            meta.insert("kd.takd.key_json".to_string(), stage.key_json.to_string());
            meta.insert("kd.takd.top1".to_string(), last.to_string());
            top1 = last;
            meta.insert("kd.takd.best_top1".to_string(), format!("{best} (epoch {best_epoch})"));
            meta.insert("kd.takd.wall_seconds".to_string(), format!("{:.1}", report.wall_seconds()));
            checkpoint::save_checkpoint(path, &tensors, &meta)?;
            Ok(())
        })?;
        eprintln!(
            "{role} {arch} seed {}: trained in {:.1}s, top1 {top1:.2} → {}",
            self.seed,
            t0.elapsed().as_secs_f64(),
            path.display()
        );
        Ok(())
    }
}
