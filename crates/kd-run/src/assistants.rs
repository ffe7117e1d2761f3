//! Progressive distillation (kd-progressive) wired to data, models and the trainer: TAKD's
//! teacher assistants, trained once per [`AssistantKey`] and cached as
//! `<cache>/assistants/<key>.safetensors`, and the builders of methods `takd` and `annealing`.
//!
//! An assistant is a vanilla-KD stage trained with the recipe's `[train]` settings and data: its
//! initialisation and data order derive from the run seed (`init/assistant-k`,
//! `data/assistant-k`), its teacher is the recipe's pretrained teacher (first link) or the
//! previous assistant. The file is written atomically once training ends; the epoch checkpoint
//! beside it makes a killed assistant resume. Every later run whose key matches (the same or a
//! longer chain, another variant or profile with the same data and training) loads the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use kd_core::checkpoint;
use kd_core::hash::canonical_json;
use kd_core::seed::derive_seed;
use kd_core::teacher::{LiveTeacher, TeacherLogits};
use kd_core::trainer::{self, TrainSpec};
use kd_core::{Classifier, Method};
use kd_progressive::{AnnealConfig, AnnealingKd, AssistantKey, ScheduledKd, TakdConfig, WithFrozen};
use kd_vanilla::VanillaKd;

use crate::data::Loader;
use crate::env;
use crate::methods::{BuildContext, Trainee};
use crate::models;
use crate::teacher::Teacher;

const META_KEY: &str = "kd.takd.key";

/// A trained (or reloaded) assistant, frozen.
pub struct Assistant {
    pub arch: String,
    pub model: Arc<dyn Classifier>,
    pub path: PathBuf,
    /// SHA-256 of its [`AssistantKey`].
    pub key: String,
    pub top1: f64,
    /// Loaded from the cache rather than trained by this call.
    pub reused: bool,
}

/// Trains or loads every assistant of `cfg.chain`, teacher side first.
pub fn prepare_chain(ctx: &BuildContext, teacher: &Teacher, cfg: &TakdConfig) -> Result<Vec<Assistant>> {
    let r = ctx.recipe;
    let dir = env::cache_dir(ctx.root).join("assistants");
    let soft =
        r.teacher_sections().iter().find(|t| t.arch == teacher.arch).is_some_and(|t| t.soft_label_cache);
    let mut chain: Vec<Assistant> = Vec::new();
    for (i, arch) in cfg.chain.iter().enumerate() {
        let role = format!("assistant-{}", i + 1);
        let key_material =
            AssistantKey::new(&teacher.arch, &teacher.hash, soft, cfg, i, &r.data, &r.train, ctx.seed);
        let key = key_material.hash()?;
        let path = dir.join(format!("{key}.safetensors"));
        let reused = path.exists();
        if reused {
            eprintln!("{role} {arch} seed {}: reusing cached assistant {}", ctx.seed, path.display());
        } else {
            let source: Box<dyn TeacherLogits> = match chain.last() {
                None => teacher.logits_source()?,
                Some(prev) => Box::new(LiveTeacher::new(prev.model.clone())),
            };
            train_assistant(ctx, cfg, i, arch, source, &canonical_json(&key_material)?, &key, &path)?;
            if chain.is_empty() {
                teacher.after_run()?;
            }
        }
        let (_, meta) = checkpoint::load_checkpoint(&path)?;
        if meta.get(META_KEY) != Some(&key) {
            bail!("cached assistant {} does not record key {key}; remove it to retrain", path.display());
        }
        let top1: f64 = meta.get("kd.takd.top1").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        let model: Arc<dyn Classifier> = Arc::from(
            kd_models::load_frozen_model(
                arch,
                r.data.num_classes,
                kd_models::BuildOptions::default(),
                &path,
                ctx.device,
            )
            .with_context(|| format!("loading {role} {arch} from {}", path.display()))?,
        );
        if reused {
            eprintln!("{role} {arch}: top1 {top1:.2} (when trained)");
        }
        chain.push(Assistant { arch: arch.clone(), model, path, key, top1, reused });
    }
    Ok(chain)
}

#[allow(clippy::too_many_arguments)]
fn train_assistant(
    ctx: &BuildContext,
    cfg: &TakdConfig,
    index: usize,
    arch: &str,
    source: Box<dyn TeacherLogits>,
    key_json: &str,
    key: &str,
    path: &std::path::Path,
) -> Result<()> {
    let r = ctx.recipe;
    let k = index + 1;
    eprintln!(
        "assistant-{k} {arch} seed {}: training ({} ← {}), key {}",
        ctx.seed,
        arch,
        source.model().arch(),
        kd_core::hash::short(key)
    );
    let built = models::build(
        arch,
        r.data.num_classes,
        derive_seed(ctx.seed, &format!("init/assistant-{k}")),
        ctx.device,
    )?;
    let mut method = VanillaKd::new(built.model.clone(), source, &cfg.vanilla())?;
    let mut optimizer = models::optimizer(&r.train.optimizer, built.trainable.clone())?;
    let loader = Loader::train(
        ctx.train_split,
        &r.data,
        r.train.batch_size,
        r.train.drop_last,
        derive_seed(ctx.seed, &format!("data/assistant-{k}")),
        ctx.device,
    );
    let ckpt = path.with_file_name(format!("{key}.ckpt.safetensors"));
    let spec = TrainSpec {
        epochs: r.train.epochs,
        base_lr: r.train.optimizer.lr(),
        lr_schedule: r.train.lr_schedule.clone(),
        checkpoint: Some(ckpt.clone()),
        run_id: format!("takd-assistant/{key}"),
        metrics: kd_core::metric::top1_top5(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let t0 = Instant::now();
    let mut bars = crate::progress::training(
        &format!("assistant-{k} s{}", ctx.seed),
        crate::progress::as_role(method.eval_entries(), &format!("assistant-{k}")),
    );
    let report = trainer::train(
        &mut method,
        &built.state,
        optimizer.as_mut(),
        &spec,
        &loader,
        ctx.eval_loader,
        bars.as_mut(),
    )
    .with_context(|| format!("training assistant-{k} {arch} (checkpoint {})", ckpt.display()))?;
    let (top1, best, best_epoch) =
        report.summary(0, "top1").ok_or_else(|| anyhow!("assistant-{k} {arch}: no evaluation recorded"))?;
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
    meta.insert("kd.takd.key_json".to_string(), key_json.to_string());
    meta.insert("kd.takd.top1".to_string(), top1.to_string());
    meta.insert("kd.takd.best_top1".to_string(), format!("{best} (epoch {best_epoch})"));
    meta.insert("kd.takd.wall_seconds".to_string(), format!("{:.1}", report.wall_seconds()));
    checkpoint::save_checkpoint(path, &tensors, &meta)?;
    let _ = std::fs::remove_file(&ckpt);
    eprintln!(
        "assistant-{k} {arch} seed {}: trained in {:.1}s, top1 {top1:.2} → {}",
        ctx.seed,
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

fn student_trainee(method: Box<dyn Method>, student: models::BuiltModel) -> Trainee {
    // Distils (through its assistants) from the recipe's one pretrained teacher.
    Trainee { method, models: vec![("student".to_string(), student)], teachers: vec![0] }
}

/// Method `takd`: `direct` is vanilla KD from the teacher; `chain` distils through the
/// assistants and reports them (`assistant-1`, ...) beside the student. With an empty chain,
/// `chain` is exactly `direct`.
pub fn build_takd(ctx: &BuildContext, cfg: &TakdConfig, variant: &str) -> Result<Trainee> {
    let teacher = ctx.one_teacher(variant)?;
    match variant {
        "direct" => {
            let student = ctx.student()?;
            let method =
                Box::new(VanillaKd::new(student.model.clone(), teacher.logits_source()?, &cfg.vanilla())?);
            Ok(student_trainee(method, student))
        }
        "chain" => {
            let assistants = prepare_chain(ctx, teacher, cfg)?;
            let source: Box<dyn TeacherLogits> = match assistants.last() {
                Some(a) => Box::new(LiveTeacher::new(a.model.clone())),
                None => teacher.logits_source()?,
            };
            let student = ctx.student()?;
            let inner = Box::new(VanillaKd::new(student.model.clone(), source, &cfg.vanilla())?);
            let method: Box<dyn Method> = if assistants.is_empty() {
                inner
            } else {
                Box::new(WithFrozen::new(
                    inner,
                    "assistant",
                    assistants.iter().map(|a| a.model.clone()).collect(),
                ))
            };
            Ok(student_trainee(method, student))
        }
        v => bail!("method `takd` has no variant `{v}`"),
    }
}

/// Method `annealing`: `fixed` (vanilla KD at constant T, α), `annealed` (scheduled T, α),
/// `annealing-kd` (Jafari et al.).
pub fn build_annealing(ctx: &BuildContext, cfg: &AnnealConfig, variant: &str) -> Result<Trainee> {
    let teacher = ctx.one_teacher(variant)?;
    let student = ctx.student()?;
    let source = teacher.logits_source()?;
    let method: Box<dyn Method> = match variant {
        "fixed" => {
            let v = cfg
                .fixed_vanilla()
                .ok_or_else(|| anyhow!("variant `fixed` needs [distill] fixed = {{ temperature, alpha }}"))?;
            Box::new(VanillaKd::new(student.model.clone(), source, &v)?)
        }
        "annealed" => Box::new(ScheduledKd::new(student.model.clone(), source, cfg)?),
        "annealing-kd" => Box::new(AnnealingKd::new(student.model.clone(), source, cfg)?),
        v => bail!("method `annealing` has no variant `{v}`"),
    };
    Ok(student_trainee(method, student))
}
