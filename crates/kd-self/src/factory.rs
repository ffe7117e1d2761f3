//! The registry's entry for `method = "self"`: variant `byot`, the student's backbone with
//! BYOT exits whose deepest exit teaches the shallow ones. No pretrained teacher.

use std::sync::Arc;

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, BuildEnv, BuiltModel, MethodFactory, MethodSetup, Trainee};
use kd_core::seed::derive_seed;
use kd_core::{Classifier, Error};

use crate::{SelfDistill, SelfDistillConfig};

pub struct SelfDistillFactory;

/// What the registry lists.
pub static FACTORY: SelfDistillFactory = SelfDistillFactory;

impl MethodFactory for SelfDistillFactory {
    fn name(&self) -> &'static str {
        "self"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["byot"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        // Refuses an exit count the student's stages cannot give, before any run.
        let cfg = SelfDistillConfig::from_table(&recipe.distill).map_err(method_error)?;
        cfg.check_backbone(&recipe.student.arch).map_err(method_error)?;
        Ok(Box::new(SelfDistillSetup(cfg)))
    }
}

struct SelfDistillSetup(SelfDistillConfig);

impl MethodSetup for SelfDistillSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        false
    }

    /// The backbone's initial weights are the plain run's (same seed, same variable names).
    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        if variant != "byot" {
            return Err(Error::Msg(format!("method `self` has no variant `{variant}`")));
        }
        let r = env.recipe();
        let seed = derive_seed(env.seed(), "init/student");
        let mut options = kd_models::BuildOptions::default();
        if let Some(side) = env.image_size() {
            options.input_size = side;
        }
        let (varmap, net) =
            kd_models::new_multi_exit_model(&r.student.arch, r.data.num_classes, seed, options, env.device())
                .map_err(method_error)?;
        let net = Arc::new(net);
        let method = Box::new(SelfDistill::new(net.clone(), &self.0).map_err(method_error)?);
        let arch = Classifier::arch(net.as_ref()).to_string();
        let built = BuiltModel::from_varmap(arch, r.data.num_classes, net, varmap, kd_models::is_trainable);
        Ok(Trainee::student(method, built))
    }
}
