//! The registry's entries of this crate, one per method (mdistiller's one registry that names
//! them all): `fitnet` (FitNet's hint through a regressor the method owns) and the losses run by
//! [`FeatureMethod`] — `at`, `sp`, `cc`, `vid`, `rkd`, `pkt`, `nst` — each with RepDistiller's
//! defaults, reading the teacher's features live (eval mode).

use kd_core::recipe::Recipe;
use kd_core::registry::{method_error, one_teacher_trainee, BuildEnv, MethodFactory, MethodSetup, Trainee};

use candle_nn::VarBuilder;

use crate::feature_method::{FeatureMethod, StepWeights};
use crate::{
    Attention, AttentionConfig, Correlation, CorrelationConfig, FeatureError, FeatureLoss, FeatureShapes,
    FitNetMethod, FitNetMethodConfig, NeuronSelectivity, NstConfig, Pkt, PktConfig, Rkd, RkdConfig,
    Similarity, SimilarityConfig, Vid, VidConfig,
};

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
        one_teacher_trainee(env, variant, |student, source| {
            let probe = env.sample_inputs(PROBE)?;
            let method = FitNetMethod::new(student.model.clone(), source, &self.0, &probe, env.seed())
                .map_err(method_error)?;
            Ok(Box::new(method))
        })
    }
}

/// The registry's entry of a loss run by [`FeatureMethod`]: variant = method name
/// (`method = "at"`, variant `at`); `[distill]` holds the step's weights ([`StepWeights`]) and
/// the loss's own keys.
pub struct FeatureFactory {
    name: &'static str,
    variants: &'static [&'static str],
    parse: fn(&toml::Table) -> Result<Box<dyn LossRecipe>, FeatureError>,
}

/// A parsed loss configuration: what builds the loss once the feature shapes are known.
pub trait LossRecipe: Send + Sync {
    fn build(
        &self,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
        vb: VarBuilder,
    ) -> Result<Box<dyn FeatureLoss>, FeatureError>;
}

/// A config whose loss needs no parameters of its own.
macro_rules! loss_recipe {
    ($config:ty, |$cfg:ident, $s:ident, $t:ident, $vb:ident| $make:expr) => {
        impl LossRecipe for $config {
            fn build(
                &self,
                $s: &FeatureShapes,
                $t: &FeatureShapes,
                $vb: VarBuilder,
            ) -> Result<Box<dyn FeatureLoss>, FeatureError> {
                let $cfg = self;
                Ok(Box::new($make?))
            }
        }
    };
}

loss_recipe!(AttentionConfig, |c, s, t, _vb| Attention::new(c, s, t));
loss_recipe!(SimilarityConfig, |c, s, t, _vb| Similarity::new(c, s, t));
loss_recipe!(CorrelationConfig, |c, s, t, vb| Correlation::new(c, s, t, vb));
loss_recipe!(VidConfig, |c, s, t, vb| Vid::new(c, s, t, vb));
loss_recipe!(RkdConfig, |c, s, t, _vb| Rkd::new(c, s, t));
loss_recipe!(PktConfig, |c, s, t, _vb| Pkt::new(c, s, t));
loss_recipe!(NstConfig, |c, s, t, _vb| NeuronSelectivity::new(c, s, t));

macro_rules! feature_factory {
    ($(#[$doc:meta])* $static:ident, $name:literal, $config:ty) => {
        $(#[$doc])*
        pub static $static: FeatureFactory = FeatureFactory {
            name: $name,
            variants: &[$name],
            parse: |table| Ok(Box::new(<$config>::from_table(table)?)),
        };
    };
}

feature_factory!(
    /// AT (Zagoruyko & Komodakis 2017): attention maps of every stage, p = 2, β = 1000.
    AT, "at", AttentionConfig
);
feature_factory!(
    /// SP (Tung & Mori 2019): batch similarity of the last stage, β = 3000.
    SP, "sp", SimilarityConfig
);
feature_factory!(
    /// CC (Peng et al. 2019): correlation congruence of embedded features, β = 0.02.
    CC, "cc", CorrelationConfig
);
feature_factory!(
    /// VID (Ahn et al. 2019): variational information of every stage, β = 1.
    VID, "vid", VidConfig
);
feature_factory!(
    /// RKD (Park et al. 2019): distance (25) and angle (50) relations of the embedding, β = 1.
    RKD, "rkd", RkdConfig
);
feature_factory!(
    /// PKT (Passalis & Tefas 2018): probabilistic transfer with a cosine kernel, β = 30000.
    PKT, "pkt", PktConfig
);
feature_factory!(
    /// NST (Huang & Wang 2017): MMD with a polynomial kernel over every stage, β = 50.
    NST, "nst", NstConfig
);

impl MethodFactory for FeatureFactory {
    fn name(&self) -> &'static str {
        self.name
    }

    fn variants(&self) -> &'static [&'static str] {
        self.variants
    }

    fn parse(&self, recipe: &Recipe) -> kd_core::Result<Box<dyn MethodSetup>> {
        let (weights, rest) = StepWeights::split(self.name, &recipe.distill).map_err(method_error)?;
        let loss = (self.parse)(&rest).map_err(method_error)?;
        Ok(Box::new(FeatureSetup { name: self.name, weights, loss }))
    }
}

struct FeatureSetup {
    name: &'static str,
    weights: StepWeights,
    loss: Box<dyn LossRecipe>,
}

impl MethodSetup for FeatureSetup {
    fn needs_teachers(&self, _variant: &str) -> bool {
        true
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        one_teacher_trainee(env, variant, |student, source| {
            let probe = env.sample_inputs(PROBE)?;
            let build = |s: &FeatureShapes, t: &FeatureShapes, vb: VarBuilder| self.loss.build(s, t, vb);
            let method = FeatureMethod::new(
                self.name,
                student.model.clone(),
                source,
                self.weights.clone(),
                &probe,
                env.seed(),
                &build,
            )
            .map_err(method_error)?;
            Ok(Box::new(method))
        })
    }
}
