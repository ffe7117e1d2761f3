//! From a recipe's `experiment.method` and `[distill]` table to a `Method` per variant, with
//! the models it trains. The only place that knows every method crate.

use anyhow::{anyhow, bail, Result};
use candle_core::Device;
use kd_core::plain::PlainTraining;
use kd_core::recipe::Recipe;
use kd_core::seed::derive_seed;
use kd_core::Method;
use kd_vanilla::{VanillaConfig, VanillaKd};

use crate::models::{self, BuiltModel};
use crate::teacher::Teacher;

/// A method's parsed and validated hyper-parameters.
pub enum MethodConfig {
    Vanilla(VanillaConfig),
}

/// Methods and the variants each trains (besides `plain`).
pub const METHODS: &[(&str, &[&str])] = &[("vanilla", &["kd"])];

/// What one run needs to build its method: the recipe, the run seed, the device and the
/// pretrained teachers (empty for methods without one).
pub struct BuildContext<'a> {
    pub recipe: &'a Recipe,
    pub seed: u64,
    pub device: &'a Device,
    pub teachers: &'a [Teacher],
}

impl BuildContext<'_> {
    /// The recipe's student, initialised from the run seed. Every variant of a seed starts from
    /// these same weights, so variants compare pairwise.
    pub fn student(&self) -> Result<BuiltModel> {
        let r = self.recipe;
        models::build(
            &r.student.arch,
            r.data.num_classes,
            derive_seed(self.seed, "init/student"),
            self.device,
        )
    }

    /// The single pretrained teacher a method needs, or an error naming the variant.
    pub fn one_teacher(&self, variant: &str) -> Result<&Teacher> {
        match self.teachers {
            [t] => Ok(t),
            [] => Err(anyhow!("variant `{variant}` needs a [teacher] in the recipe")),
            many => {
                Err(anyhow!("variant `{variant}` distils from one teacher; the recipe has {}", many.len()))
            }
        }
    }
}

/// A built method and the models whose variables the trainer optimises and checkpoints.
/// The first model is the run's primary model (saved as the run's final model).
pub struct Trainee {
    pub method: Box<dyn Method>,
    /// `(name, model)`; names prefix variables in checkpoints when there is more than one.
    pub models: Vec<(String, BuiltModel)>,
}

impl Trainee {
    fn student(method: Box<dyn Method>, student: BuiltModel) -> Self {
        Trainee { method, models: vec![("student".to_string(), student)] }
    }

    /// Every variable to checkpoint, sorted, prefixed by model name when there are several.
    pub fn state(&self) -> Vec<(String, candle_core::Var)> {
        self.collect(|m| &m.state)
    }

    /// The variables the optimiser updates.
    pub fn trainable(&self) -> Vec<(String, candle_core::Var)> {
        self.collect(|m| &m.trainable)
    }

    fn collect(
        &self,
        pick: impl Fn(&BuiltModel) -> &Vec<(String, candle_core::Var)>,
    ) -> Vec<(String, candle_core::Var)> {
        let prefix = self.models.len() > 1;
        self.models
            .iter()
            .flat_map(|(name, m)| {
                pick(m)
                    .iter()
                    .map(move |(n, v)| (if prefix { format!("{name}/{n}") } else { n.clone() }, v.clone()))
            })
            .collect()
    }
}

impl MethodConfig {
    pub fn parse(recipe: &Recipe) -> Result<Self> {
        let method = recipe.experiment.method.as_str();
        let cfg = match method {
            "vanilla" => MethodConfig::Vanilla(VanillaConfig::from_table(&recipe.distill)?),
            other => bail!(
                "unknown method `{other}` in experiment.method; known: {}",
                METHODS.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(", ")
            ),
        };
        let known = METHODS.iter().find(|(m, _)| *m == method).map(|(_, v)| *v).unwrap_or(&[]);
        for v in &recipe.experiment.variants {
            if v != "plain" && !known.contains(&v.as_str()) {
                bail!("method `{method}` has no variant `{v}`; it has: plain, {}", known.join(", "));
            }
        }
        Ok(cfg)
    }

    /// Whether `variant` needs the recipe's pretrained teachers loaded.
    pub fn needs_teachers(&self, variant: &str) -> bool {
        match self {
            MethodConfig::Vanilla(_) => variant != "plain",
        }
    }

    pub fn build(&self, variant: &str, ctx: &BuildContext) -> Result<Trainee> {
        let method_name = ctx.recipe.experiment.method.as_str();
        if variant == "plain" {
            let student = ctx.student()?;
            let method = Box::new(PlainTraining::new(method_name, student.model.clone(), 0.0));
            return Ok(Trainee::student(method, student));
        }
        match (self, variant) {
            (MethodConfig::Vanilla(cfg), "kd") => {
                let teacher = ctx.one_teacher(variant)?;
                let student = ctx.student()?;
                let method = Box::new(VanillaKd::new(student.model.clone(), teacher.logits_source()?, cfg)?);
                Ok(Trainee::student(method, student))
            }
            (_, v) => bail!("variant `{v}` is not built by method `{method_name}`"),
        }
    }
}
