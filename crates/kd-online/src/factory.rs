//! The registry's entries for `method = "dml"` (K peers teaching each other) and
//! `method = "one"` (a multi-branch network whose gated ensemble teaches its branches). Neither
//! has a pretrained teacher.

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, BuildEnv, BuiltModel, MethodFactory, MethodSetup, Trainee};
use kd_core::seed::derive_seed;
use kd_core::{Classifier, Error};

use crate::{new_one_model, DeepMutualLearning, DmlConfig, OnTheFlyNativeEnsemble, OneConfig};

pub struct DmlFactory;
pub struct OneFactory;

/// What the registry lists.
pub static DML: DmlFactory = DmlFactory;
pub static ONE: OneFactory = OneFactory;

impl MethodFactory for DmlFactory {
    fn name(&self) -> &'static str {
        "dml"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["dml"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(DmlSetup(DmlConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct DmlSetup(DmlConfig);

impl MethodSetup for DmlSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        false
    }

    /// K peers, each initialised from its own seed; trained by one optimiser whose
    /// per-variable state keeps the peers' momenta apart.
    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        if variant != "dml" {
            return Err(Error::Msg(format!("method `dml` has no variant `{variant}`")));
        }
        let mut models = Vec::new();
        for (k, arch) in self.0.peers.iter().enumerate() {
            models.push((format!("peer-{}", k + 1), env.model(arch, &format!("init/peer-{}", k + 1))?));
        }
        let peers = models.iter().map(|(_, m)| m.model.clone()).collect();
        let method = Box::new(DeepMutualLearning::new(peers, &self.0).map_err(method_error)?);
        Ok(Trainee { method, models, teachers: Vec::new() })
    }
}

impl MethodFactory for OneFactory {
    fn name(&self) -> &'static str {
        "one"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["one"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(OneSetup(OneConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct OneSetup(OneConfig);

impl MethodSetup for OneSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        false
    }

    /// The ONE model on the student's backbone (`plain` trains that backbone alone).
    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        if variant != "one" {
            return Err(Error::Msg(format!("method `one` has no variant `{variant}`")));
        }
        let r = env.recipe();
        let seed = derive_seed(env.seed(), "init/one");
        let (varmap, net) = new_one_model(&self.0, &r.student.arch, r.data.num_classes, seed, env.device())
            .map_err(method_error)?;
        let method = Box::new(OnTheFlyNativeEnsemble::new(net.clone(), &self.0));
        let arch = Classifier::arch(net.as_ref()).to_string();
        let mut model =
            BuiltModel::from_varmap(arch, r.data.num_classes, net, varmap, kd_models::is_trainable);
        model.trainable = kd_models::trainable_vars(&model.varmap);
        Ok(Trainee { method, models: vec![("one".to_string(), model)], teachers: Vec::new() })
    }
}
