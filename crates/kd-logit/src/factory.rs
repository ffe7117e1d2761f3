//! The registry's entries for this crate's methods: `dkd`, `dist`, `kd-logit-stand` and `ctkd`,
//! each one variant of the same name, distilling the recipe's one teacher into the student with
//! [`LogitMethod`] (one generic factory; each method is its objective), and `mlkd`, which
//! trains on a weak and a strong view of every image ([`MlkdMethod`]) and so asks the pipeline
//! for the strong one.

use std::marker::PhantomData;

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, one_teacher_trainee, BuildEnv, MethodFactory, MethodSetup, Trainee};

use crate::{
    CtkdObjective, DistLoss, DkdLoss, LogitMethod, LogitObjective, MlkdConfig, MlkdMethod, StandardizedKdLoss,
};

/// The factory of the method whose objective is `O`.
pub struct LogitFactory<O>(PhantomData<fn() -> O>);

impl<O> LogitFactory<O> {
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<O> Default for LogitFactory<O> {
    fn default() -> Self {
        Self::new()
    }
}

/// Decoupled KD (`method = "dkd"`; `logit_stand = true` adds logit standardisation).
pub static DKD: LogitFactory<DkdLoss> = LogitFactory::new();
/// DIST (`method = "dist"`).
pub static DIST: LogitFactory<DistLoss> = LogitFactory::new();
/// Vanilla KD on standardised logits (`method = "kd-logit-stand"`).
pub static KD_LOGIT_STAND: LogitFactory<StandardizedKdLoss> = LogitFactory::new();
/// Curriculum temperature KD (`method = "ctkd"`), its temperature a parameter of the method.
pub static CTKD: LogitFactory<CtkdObjective> = LogitFactory::new();

impl<O: LogitObjective> MethodFactory for LogitFactory<O> {
    fn name(&self) -> &'static str {
        O::METHOD
    }

    fn variants(&self) -> &'static [&'static str] {
        const { &[O::METHOD] }
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        let classes = recipe.data.num_classes;
        if classes < 2 {
            return Err(method_error(format!(
                "method `{}` distils class probabilities and needs at least 2 classes; data.num_classes = {classes}",
                O::METHOD
            )));
        }
        Ok(Box::new(LogitSetup::<O>(O::parse(&recipe.distill).map_err(method_error)?)))
    }
}

struct LogitSetup<O: LogitObjective>(O::Config);

impl<O: LogitObjective> MethodSetup for LogitSetup<O> {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        one_teacher_trainee(env, variant, |student, source| {
            let objective = O::build(&self.0, env.device()).map_err(method_error)?;
            Ok(Box::new(LogitMethod::new(student.model.clone(), source, objective).map_err(method_error)?))
        })
    }
}

/// Multi-level logit distillation (`method = "mlkd"`), on weak and strong views.
pub static MLKD: MlkdFactory = MlkdFactory;

/// The factory of `mlkd`.
pub struct MlkdFactory;

impl MethodFactory for MlkdFactory {
    fn name(&self) -> &'static str {
        MlkdConfig::METHOD
    }

    fn variants(&self) -> &'static [&'static str] {
        &[MlkdConfig::METHOD]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        let classes = recipe.data.num_classes;
        if classes < 2 {
            return Err(method_error(format!(
                "method `mlkd` distils class probabilities and needs at least 2 classes; data.num_classes = {classes}"
            )));
        }
        Ok(Box::new(MlkdSetup(MlkdConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct MlkdSetup(MlkdConfig);

impl MethodSetup for MlkdSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn strong_view(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        one_teacher_trainee(env, variant, |student, source| {
            Ok(Box::new(
                MlkdMethod::new(student.model.clone(), source, self.0.clone()).map_err(method_error)?,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_factory_names_its_method_and_one_variant_of_that_name() {
        let all: [&dyn MethodFactory; 5] = [&DKD, &DIST, &KD_LOGIT_STAND, &CTKD, &MLKD];
        let names: Vec<(&str, &[&str])> = all.iter().map(|f| (f.name(), f.variants())).collect();
        assert_eq!(
            names,
            [
                ("dkd", &["dkd"][..]),
                ("dist", &["dist"][..]),
                ("kd-logit-stand", &["kd-logit-stand"][..]),
                ("ctkd", &["ctkd"][..]),
                ("mlkd", &["mlkd"][..])
            ]
        );
    }
}
