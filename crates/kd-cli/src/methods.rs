//! From a recipe's `experiment.method` and `[distill]` table to a `Method` per variant.
//! The only place that knows every method crate.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use kd_core::plain::PlainTraining;
use kd_core::recipe::Recipe;
use kd_core::{Classifier, Method};
use kd_vanilla::{VanillaConfig, VanillaKd};

use crate::teacher::Teacher;

/// A method's parsed and validated hyper-parameters.
pub enum MethodConfig {
    Vanilla(VanillaConfig),
}

/// Methods and the variants each trains (besides `plain`).
pub const METHODS: &[(&str, &[&str])] = &[("vanilla", &["kd"])];

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

    pub fn build(
        &self,
        variant: &str,
        method_name: &str,
        student: Arc<dyn Classifier>,
        teacher: Option<&Teacher>,
    ) -> Result<Box<dyn Method>> {
        if variant == "plain" {
            return Ok(Box::new(PlainTraining::new(method_name, student, 0.0)));
        }
        match (self, variant) {
            (MethodConfig::Vanilla(cfg), "kd") => {
                let teacher =
                    teacher.ok_or_else(|| anyhow!("variant `kd` needs a [teacher] in the recipe"))?;
                Ok(Box::new(VanillaKd::new(student, teacher.logits_source()?, cfg)?))
            }
            (_, v) => bail!("variant `{v}` is not built by method `{method_name}`"),
        }
    }
}
