//! The registry's entry for `method = "multi-teacher"`: `single` (vanilla KD from one of the
//! teachers, the single-teacher reference exactly) and the combination rules `mean`,
//! `weighted`, `confidence`, `entropy` over every teacher.

use kd_core::losses::SoftTargetConfig;
use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, BuildEnv, MethodFactory, MethodSetup, Trainee};
use kd_core::student_kd::SoftTargetKd;
use kd_core::Error;

use crate::{MultiTeacherConfig, MultiTeacherKd};

pub struct MultiTeacherFactory;

/// What the registry lists.
pub static FACTORY: MultiTeacherFactory = MultiTeacherFactory;

impl MethodFactory for MultiTeacherFactory {
    fn name(&self) -> &'static str {
        "multi-teacher"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["single", "mean", "weighted", "confidence", "entropy"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        let archs: Vec<String> = recipe.teacher_sections().iter().map(|t| t.arch.clone()).collect();
        let cfg = MultiTeacherConfig::from_table(&recipe.distill, &archs).map_err(method_error)?;
        let v = &recipe.experiment.variants;
        if v.iter().any(|v| v == "weighted") && cfg.weights.is_none() {
            return Err(Error::Msg(
                "[distill] for method `multi-teacher`: variant `weighted` needs `weights`, one per teacher"
                    .into(),
            ));
        }
        if v.iter().any(|v| v == "single") && cfg.single_teacher.is_none() {
            return Err(Error::Msg(
                "[distill] for method `multi-teacher`: variant `single` needs `single_teacher` (a teacher arch)"
                    .into(),
            ));
        }
        Ok(Box::new(MultiTeacherSetup(cfg)))
    }
}

struct MultiTeacherSetup(MultiTeacherConfig);

impl MethodSetup for MultiTeacherSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        let cfg = &self.0;
        let teachers = env.teachers();
        if variant == "single" {
            let name = cfg.single_teacher.as_deref().unwrap_or_default();
            let index = teachers.iter().position(|t| t.arch == name).ok_or_else(|| {
                Error::Msg(format!("single_teacher `{name}` is not among the recipe's teachers"))
            })?;
            let vanilla = SoftTargetConfig {
                temperature: cfg.temperature,
                alpha: cfg.alpha,
                label_smoothing: cfg.label_smoothing,
            };
            let source = env.teacher(index)?;
            let student = env.student()?;
            let method = SoftTargetKd::new(student.model.clone(), source, &vanilla).map_err(method_error)?;
            return Ok(Trainee::student(Box::new(method), student).with_teachers([index]));
        }
        if teachers.is_empty() {
            return Err(Error::Msg(format!("variant `{variant}` needs [[teachers]] in the recipe")));
        }
        let sources = (0..teachers.len()).map(|i| env.teacher(i)).collect::<kd_core::Result<Vec<_>>>()?;
        let student = env.student()?;
        let method =
            MultiTeacherKd::new(variant, student.model.clone(), sources, cfg).map_err(method_error)?;
        Ok(Trainee::student(Box::new(method), student).with_teachers(0..teachers.len()))
    }
}
