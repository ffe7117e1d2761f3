//! The registry's entry for `method = "cross-modal"`: `kd`, `kd-feat` and `fusion` on paired
//! image/audio examples. The pipeline's paired task (kd-run's `cross_modal`) reads the two
//! modalities, packs each pair into one input row and offers what a build needs: the audio
//! student (`env.student()`), the image teacher (`env.teacher(0)`), a fresh image encoder for
//! `fusion` (`env.model("lenet", "init/image")`) and packed sample rows. The method's own
//! parameters (`kd-feat`'s projection, `fusion`'s head) are seeded from the run seed's `init`
//! stream under their names, as every model of the paired task is.

use std::sync::Arc;

use candle_core::{DType, Var};
use candle_nn::VarMap;
use kd_core::recipe::Recipe;
use kd_core::registry::{
    method_error, sorted_vars, BuildEnv, BuiltModel, MethodFactory, MethodSetup, Trainee,
};
use kd_core::seed::derive_seed;
use kd_core::{Classifier, Mode};
use kd_models::small_cnn::LENET_ARCH;

use crate::{CrossModal, CrossModalConfig, FeatureAlignment, LateFusion, PackedLayout};

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
        Ok(Box::new(CrossModalSetup(cfg)))
    }
}

struct CrossModalSetup(CrossModalConfig);

/// The packed layout of the task's inputs (`sample`: a few of its rows): modality B is
/// `[distill.audio]`'s `1×n_mels×frames` spectrogram, modality A the rest of a row, an image of
/// `env.image_size()` on a side.
pub fn packed_layout(
    cfg: &CrossModalConfig,
    env: &dyn BuildEnv,
    sample: &candle_core::Tensor,
) -> kd_core::Result<PackedLayout> {
    let not_paired = || {
        method_error(
            "method `cross-modal` runs on paired image/audio data (kd-run's paired task); this task's inputs are \
             not packed image/audio rows",
        )
    };
    let side = env.image_size().ok_or_else(not_paired)?;
    let row = sample.dims().get(1).copied().ok_or_else(not_paired)?;
    let b = [1, cfg.audio.n_mels, cfg.audio.frames];
    let a_len = row.checked_sub(b.iter().product()).filter(|&a| side > 0 && a > 0 && a % (side * side) == 0);
    let a_len = a_len.ok_or_else(not_paired)?;
    Ok(PackedLayout { a: [a_len / (side * side), side, side], b })
}

/// The embedding width of `model` on its modality of the sample rows.
fn embedding_dim(model: &dyn Classifier, input: &candle_core::Tensor) -> kd_core::Result<usize> {
    Ok(model.forward(input, Mode::Eval)?.embedding.dim(1)?)
}

/// A fresh `VarMap` whose variables are seeded from the run seed's `init` stream by name.
fn owned_vars(env: &dyn BuildEnv) -> (VarMap, candle_nn::VarBuilder<'static>) {
    let varmap = VarMap::new();
    let vb =
        kd_core::init::seeded_var_builder(&varmap, derive_seed(env.seed(), "init"), DType::F32, env.device());
    (varmap, vb)
}

impl MethodSetup for CrossModalSetup {
    fn needs_teachers(&self, variant: &str) -> bool {
        variant == "kd" || variant == "kd-feat"
    }

    fn build(&self, variant: &str, env: &dyn BuildEnv) -> kd_core::Result<Trainee> {
        let cfg = &self.0;
        // A few packed rows: the layout, and the encoders' embedding widths.
        let sample = env.sample_inputs(2)?;
        let layout = packed_layout(cfg, env, &sample)?;
        let student = env.student()?;
        match variant {
            "kd" | "kd-feat" => {
                let index = env.one_teacher(variant)?;
                let teacher = env.teacher(index)?.model().clone();
                let mut owned = Vec::new();
                let align = if variant == "kd-feat" {
                    let s_dim = embedding_dim(student.model.as_ref(), &layout.modality_b(&sample)?)?;
                    let t_dim = embedding_dim(teacher.as_ref(), &layout.modality_a(&sample)?)?;
                    let (varmap, vb) = owned_vars(env);
                    let align = FeatureAlignment::new(
                        s_dim,
                        t_dim,
                        cfg.feature_loss,
                        cfg.feature_weight,
                        vb.pp("projection"),
                    )?;
                    owned = sorted_vars(&varmap);
                    Some(align)
                } else {
                    None
                };
                let method = CrossModal::distill(student.model.clone(), teacher, layout, cfg, align)
                    .map_err(method_error)?
                    .with_parameters(owned);
                Ok(Trainee::student(Box::new(method), student).with_teachers([index]))
            }
            "fusion" => {
                let image = env.model(LENET_ARCH, "init/image")?;
                let i_dim = embedding_dim(image.model.as_ref(), &layout.modality_a(&sample)?)?;
                let a_dim = embedding_dim(student.model.as_ref(), &layout.modality_b(&sample)?)?;
                let (varmap, vb) = owned_vars(env);
                let fusion = Arc::new(LateFusion::new(
                    image.model.clone(),
                    i_dim,
                    student.model.clone(),
                    a_dim,
                    layout,
                    vb.pp("fusion_head"),
                )?);
                // One model to train, save and report: both encoders and the head.
                let head = sorted_vars(&varmap);
                let mut state: Vec<(String, Var)> =
                    image.state.iter().chain(&student.state).chain(&head).cloned().collect();
                state.sort_by(|a, b| a.0.cmp(&b.0));
                let mut trainable: Vec<(String, Var)> =
                    image.trainable.iter().chain(&student.trainable).chain(&head).cloned().collect();
                trainable.sort_by(|a, b| a.0.cmp(&b.0));
                let model = BuiltModel {
                    arch: fusion.arch().to_string(),
                    num_classes: student.num_classes,
                    model: fusion.clone(),
                    varmap,
                    state,
                    trainable,
                };
                Ok(Trainee::student(Box::new(CrossModal::fusion(fusion, layout)), model))
            }
            other => Err(method_error(format!("method `cross-modal` has no variant `{other}`"))),
        }
    }
}
