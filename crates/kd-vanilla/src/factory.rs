//! The registry's entry for `method = "vanilla"`: variant `kd`, Hinton KD from the recipe's one
//! teacher (score KD on a one-output regression task such as STS-B).

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, one_teacher_trainee, BuildEnv, MethodFactory, MethodSetup, Trainee};

use crate::{parse_config, score_kd, VanillaConfig, VanillaKd};

pub struct VanillaFactory;

/// What the registry lists.
pub static FACTORY: VanillaFactory = VanillaFactory;

impl MethodFactory for VanillaFactory {
    fn name(&self) -> &'static str {
        "vanilla"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["kd"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(VanillaSetup(parse_config(&recipe.distill).map_err(method_error)?)))
    }
}

struct VanillaSetup(VanillaConfig);

impl MethodSetup for VanillaSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        one_teacher_trainee(env, variant, |student, source| {
            Ok(if env.recipe().data.num_classes == 1 {
                Box::new(score_kd(student.model.clone(), source, &self.0).map_err(method_error)?)
            } else {
                Box::new(VanillaKd::new(student.model.clone(), source, &self.0).map_err(method_error)?)
            })
        })
    }
}
