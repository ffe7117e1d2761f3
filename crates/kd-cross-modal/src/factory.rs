//! The registry's entry for `method = "cross-modal"`: `kd`, `kd-feat` and `fusion` on paired
//! image/audio examples. Its runs need paired data and an image teacher, which the pipeline's
//! paired task provides (kd-run's `cross_modal`), so this entry validates the recipe and names
//! the variants; `build` is the paired task's.

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, BuildEnv, MethodFactory, MethodSetup, Trainee};
use kd_core::Error;

use crate::CrossModalConfig;

pub struct CrossModalFactory;

/// What the registry lists.
pub static FACTORY: CrossModalFactory = CrossModalFactory;

impl MethodFactory for CrossModalFactory {
    fn name(&self) -> &'static str {
        "cross-modal"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["kd", "kd-feat", "fusion"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        let cfg = CrossModalConfig::from_table(&recipe.distill).map_err(method_error)?;
        cfg.check_variants(&recipe.experiment.variants).map_err(method_error)?;
        Ok(Box::new(CrossModalSetup))
    }
}

struct CrossModalSetup;

impl MethodSetup for CrossModalSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        // The paired task loads (or trains) its own image teacher.
        false
    }

    fn build(&self, variant: &str, _env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        Err(Error::Msg(format!(
            "method `cross-modal` variant `{variant}` runs on paired image/audio data: its recipe needs a [paired] \
             task (kd-run's cross_modal runner), not a single-modality one"
        )))
    }
}
