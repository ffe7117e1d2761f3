//! The method registry: the one list of every method crate's factory. Adding a method is a new
//! crate, one line in [`METHODS`], and a recipe (README, "Adding a method").

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use kd_core::plain::PlainTraining;
use kd_core::recipe::Recipe;
use kd_core::registry::{BuildEnv, MethodFactory, MethodSetup, Trainee};
use kd_core::{Classifier, Method};

/// Every method kd-bench runs, in the order `kd list` shows them.
pub static METHODS: &[&dyn MethodFactory] = &[
    &kd_vanilla::factory::FACTORY,
    &kd_multi_teacher::factory::FACTORY,
    &kd_progressive::factory::TAKD,
    &kd_online::factory::DML,
    &kd_online::factory::ONE,
    &kd_progressive::factory::ANNEALING,
    &kd_self::factory::FACTORY,
    &kd_cross_modal::factory::FACTORY,
    &kd_feature::factory::FITNET,
    &kd_feature::crd_method::CRD,
    &kd_feature::review_kd_method::REVIEW_KD,
];

/// The factory of method `name`, or an error listing the known ones.
pub fn factory(name: &str) -> Result<&'static dyn MethodFactory> {
    METHODS.iter().copied().find(|f| f.name() == name).ok_or_else(|| {
        anyhow!(
            "unknown method `{name}` in experiment.method; known: {}",
            METHODS.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// How a task trains its `plain` variant: the method name and the student give the method.
pub type PlainMethod<'a> = dyn Fn(&str, Arc<dyn Classifier>) -> Box<dyn Method> + 'a;

/// A recipe's method, parsed and validated: its factory and typed configuration.
pub struct ParsedMethod {
    pub factory: &'static dyn MethodFactory,
    setup: Box<dyn MethodSetup>,
}

impl ParsedMethod {
    /// Parses the recipe's method and `[distill]`, and checks its variants exist.
    pub fn parse(recipe: &Recipe) -> Result<Self> {
        let method = recipe.experiment.method.as_str();
        let factory = factory(method)?;
        let setup = factory.parse(recipe)?;
        let known = factory.variants();
        for v in &recipe.experiment.variants {
            if v != "plain" && !known.contains(&v.as_str()) {
                bail!("method `{method}` has no variant `{v}`; it has: plain, {}", known.join(", "));
            }
        }
        Ok(ParsedMethod { factory, setup })
    }

    pub fn name(&self) -> &'static str {
        self.factory.name()
    }

    /// Whether `variant` needs the recipe's pretrained teachers loaded.
    pub fn needs_teachers(&self, variant: &str) -> bool {
        variant != "plain" && self.setup.needs_teachers(variant)
    }

    /// Builds `variant` for one run; `plain` is the task's plain training of the student
    /// (`plain` builds it: cross-entropy by default).
    pub fn build(&self, variant: &str, env: &dyn BuildEnv, plain: &PlainMethod) -> Result<Trainee> {
        if variant == "plain" {
            let student = env.student()?;
            let method = plain(self.name(), student.model.clone());
            return Ok(Trainee::student(method, student));
        }
        self.setup.build(variant, env).with_context(|| format!("building variant `{variant}`"))
    }
}

/// The image task's `plain`: cross-entropy on the labels, no label smoothing.
pub fn cross_entropy_plain(
    name: &str,
    model: std::sync::Arc<dyn kd_core::Classifier>,
) -> Box<dyn kd_core::Method> {
    Box::new(PlainTraining::new(name, model, 0.0))
}
