//! The registry's entry for `method = "fitnet"`: variant `fitnet`, FitNet's hint loss through
//! a regressor the method owns, from the teacher's stage features (live, eval mode).
//! The other losses of this crate are not methods yet (issue: the feature/logit zoo).

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, BuildEnv, MethodFactory, MethodSetup, Trainee};

use crate::{FitNetMethod, FitNetMethodConfig};

/// How many evaluation inputs size the regressor (one eval forward of each model).
const PROBE: usize = 2;

pub struct FitNetFactory;

/// What the registry lists.
pub static FITNET: FitNetFactory = FitNetFactory;

impl MethodFactory for FitNetFactory {
    fn name(&self) -> &'static str {
        "fitnet"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["fitnet"]
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        Ok(Box::new(FitNetSetup(FitNetMethodConfig::from_table(&recipe.distill).map_err(method_error)?)))
    }
}

struct FitNetSetup(FitNetMethodConfig);

impl MethodSetup for FitNetSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        let teacher = env.one_teacher(variant)?;
        let source = env.teacher(teacher)?;
        let student = env.student()?;
        let probe = env.sample_inputs(PROBE)?;
        let method = FitNetMethod::new(student.model.clone(), source, &self.0, &probe, env.seed())
            .map_err(method_error)?;
        Ok(Trainee::student(Box::new(method), student).with_teachers([teacher]))
    }
}
