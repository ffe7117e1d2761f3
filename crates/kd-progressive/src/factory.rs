//! The registry's entries for `method = "takd"` (`direct`, `chain`) and `method = "annealing"`
//! (`fixed`, `annealed`, `annealing-kd`).

use std::sync::Arc;

use kd_core::hash::canonical_json;
use kd_core::recipe::Recipe;
use kd_core::registry::{
    method_error, BuildEnv, MethodFactory, MethodSetup, StageSpec, TrainedStage, Trainee,
};
use kd_core::student_kd::SoftTargetKd;
use kd_core::teacher::{LiveTeacher, TeacherLogits};
use kd_core::{Classifier, Error, Method};

use crate::{AnnealConfig, AnnealingKd, AssistantKey, ScheduledKd, TakdConfig, WithFrozen};

pub struct TakdFactory;
pub struct AnnealingFactory;

/// What the registry lists.
pub static TAKD: TakdFactory = TakdFactory;
pub static ANNEALING: AnnealingFactory = AnnealingFactory;

impl MethodFactory for TakdFactory {
    fn name(&self) -> &'static str {
        "takd"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["direct", "chain"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(TakdSetup(TakdConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct TakdSetup(TakdConfig);

/// Trains or loads every assistant of `cfg.chain`, teacher side first. Each link is a
/// vanilla-KD stage trained with the recipe's `[train]` settings and data, initialised from
/// `init/assistant-k` and ordered by `data/assistant-k`; its teacher is the recipe's teacher
/// (first link) or the previous assistant. Every later run whose key matches (the same or a
/// longer chain, another variant or profile with the same data and training) loads it.
fn prepare_chain(env: &dyn BuildEnv, cfg: &TakdConfig, teacher: usize) -> kd_core::Result<Vec<TrainedStage>> {
    let r = env.recipe();
    let info = env.teachers().into_iter().nth(teacher).ok_or_else(|| Error::Msg("no teacher".into()))?;
    let mut chain: Vec<TrainedStage> = Vec::new();
    for (i, arch) in cfg.chain.iter().enumerate() {
        let k = i + 1;
        let key_material = AssistantKey::new(
            &info.arch,
            &info.sha256,
            info.soft_label_cache,
            cfg,
            i,
            &r.data,
            &r.train,
            env.seed(),
        );
        let key = key_material.hash()?;
        let key_json = canonical_json(&key_material)?;
        let previous: Option<Arc<dyn Classifier>> = chain.last().map(|a| a.model.clone());
        let (role, init, data) =
            (format!("assistant-{k}"), format!("init/assistant-{k}"), format!("data/assistant-{k}"));
        let spec = StageSpec { role: &role, arch, key: &key, key_json: &key_json, init: &init, data: &data };
        let stage = env.train_stage(&spec, &mut |built| {
            let source: Box<dyn TeacherLogits> = match &previous {
                None => env.teacher(teacher)?,
                Some(prev) => Box::new(LiveTeacher::new(prev.clone())),
            };
            Ok(Box::new(
                SoftTargetKd::new(built.model.clone(), source, &cfg.vanilla()).map_err(method_error)?,
            ))
        })?;
        chain.push(stage);
    }
    Ok(chain)
}

impl MethodSetup for TakdSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    /// `direct` is vanilla KD from the teacher; `chain` distils through the assistants and
    /// reports them (`assistant-1`, ...) beside the student. With an empty chain, `chain` is
    /// exactly `direct`.
    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        let cfg = &self.0;
        let teacher = env.one_teacher(variant)?;
        match variant {
            "direct" => {
                let student = env.student()?;
                let method = SoftTargetKd::new(student.model.clone(), env.teacher(teacher)?, &cfg.vanilla())
                    .map_err(method_error)?;
                Ok(Trainee::student(Box::new(method), student).with_teachers([teacher]))
            }
            "chain" => {
                let assistants = prepare_chain(env, cfg, teacher)?;
                let source: Box<dyn TeacherLogits> = match assistants.last() {
                    Some(a) => Box::new(LiveTeacher::new(a.model.clone())),
                    None => env.teacher(teacher)?,
                };
                let student = env.student()?;
                let inner = Box::new(
                    SoftTargetKd::new(student.model.clone(), source, &cfg.vanilla()).map_err(method_error)?,
                );
                let method: Box<dyn Method> = if assistants.is_empty() {
                    inner
                } else {
                    Box::new(WithFrozen::new(
                        inner,
                        "assistant",
                        assistants.iter().map(|a| a.model.clone()).collect(),
                    ))
                };
                Ok(Trainee::student(method, student).with_teachers([teacher]))
            }
            v => Err(Error::Msg(format!("method `takd` has no variant `{v}`"))),
        }
    }
}

impl MethodFactory for AnnealingFactory {
    fn name(&self) -> &'static str {
        "annealing"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["fixed", "annealed", "annealing-kd"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        let cfg = AnnealConfig::from_table(&recipe.distill).map_err(method_error)?;
        cfg.require_variants(&recipe.experiment.variants).map_err(method_error)?;
        Ok(Box::new(AnnealingSetup(cfg)))
    }
}

struct AnnealingSetup(AnnealConfig);

impl MethodSetup for AnnealingSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    /// `fixed` (vanilla KD at constant T, α), `annealed` (scheduled T, α), `annealing-kd`
    /// (Jafari et al.).
    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        let cfg = &self.0;
        let teacher = env.one_teacher(variant)?;
        let student = env.student()?;
        let source = env.teacher(teacher)?;
        let method: Box<dyn Method> = match variant {
            "fixed" => {
                let v = cfg.fixed_vanilla().ok_or_else(|| {
                    Error::Msg("variant `fixed` needs [distill] fixed = { temperature, alpha }".into())
                })?;
                Box::new(SoftTargetKd::new(student.model.clone(), source, &v).map_err(method_error)?)
            }
            "annealed" => {
                Box::new(ScheduledKd::new(student.model.clone(), source, cfg).map_err(method_error)?)
            }
            "annealing-kd" => {
                Box::new(AnnealingKd::new(student.model.clone(), source, cfg).map_err(method_error)?)
            }
            v => return Err(Error::Msg(format!("method `annealing` has no variant `{v}`"))),
        };
        Ok(Trainee::student(method, student).with_teachers([teacher]))
    }
}
