//! Feature- and relation-based distillation losses, one file per method, each equal to the
//! code of RepDistiller (Tian, Krishnan & Isola, *Contrastive Representation Distillation*,
//! ICLR 2020; <https://github.com/HobbitLong/RepDistiller>, commit `b84f547`): values and
//! gradients are checked against fixtures its own `distiller_zoo` produced
//! (`tests/fixtures/`, `tests/reference.rs`).
//!
//! | method | file | features (ours) | RepDistiller feats | trainable parts | β |
//! |---|---|---|---|---|---|
//! | FitNet | [`fitnet`] | stage `hint_stage` (default 1) | `feat[hint_layer]`, `hint_layer = 2` | [`fitnet::ConvReg`] | 100 |
//! | AT | [`at`] | every stage | `feat[1:-1]` | – | 1000 |
//! | SP | [`sp`] | last stage | `feat[-2]` | – | 3000 |
//! | CC | [`cc`] | embedding | `feat[-1]` | [`cc::LinearEmbed`] ×2 | 0.02 |
//! | VID | [`vid`] | every stage | `feat[1:-1]` | regressor + log-variance per stage | 1 |
//! | RKD | [`rkd`] | embedding | `feat[-1]` | – | 1 (inner 25 / 50) |
//! | PKT | [`pkt`] | embedding | `feat[-1]` | – | 30000 |
//! | NST | [`nst`] | every stage | `feat[1:-1]` | – | 50 |
//!
//! **Feature indices.** RepDistiller's CIFAR ResNet returns `[f0, f1, f2, f3, f4]`: the stem
//! output, the three stage outputs (post-ReLU) and the pooled pre-logit vector. Ours
//! ([`kd_core::ModelOutput`]) has `stage_features = [f1, f2, f3]` and `embedding = f4`; the stem
//! `f0` is not exposed and no method here uses it. So `feat[k]` for `k` in 1..=3 is our stage
//! `k − 1`, `feat[1:-1]` is every stage, `feat[-2]` the last stage and `feat[-1]` the embedding.
//!
//! **Weights.** [`FeatureLoss::loss`] is the raw criterion, as RepDistiller's `criterion_kd`
//! returns it (RKD's inner distance/angle weights 25/50 included, as in its `RKDLoss`);
//! [`FeatureLoss::beta`] is the weight β, [`FeatureLoss::weighted_loss`] their product.
//! RepDistiller's step is `γ·CE + α·KD + β·feature_loss` (train_student.py, helper/loops.py) with
//! `γ = 1` (`-r`, default), `kd_T = 4`, and, in scripts/run_cifar_distill.sh for every feature
//! method, `α = 0` (`-a 0`, no Hinton term) and the β of the table (`-b`). The step around a loss
//! (CE, optional KD, the teacher's features) is a [`kd_core::Method`]: [`fitnet_method`] for
//! FitNet, owning its regressor, and [`feature_method::FeatureMethod`] for the others, owning
//! the loss's parameters; [`factory`] registers them all.
//!
//! **mdistiller** (<https://github.com/megvii-research/mdistiller>, commit `a08d46f`,
//! `mdistiller/distillers/`, `mdistiller/engine/cfg.py`) agrees on every weight above that it
//! has (CE 1.0 and FEAT_WEIGHT 100 / 1000 / 3000 / 1 / 1 / 30000 / 50 for FitNet, AT, SP, VID,
//! RKD, PKT, NST; no KD term) and on the features for CIFAR ResNets: its `feats` is
//! `[f0, f1, f2, f3]` without the pooled vector, so its `feats[1:]` (AT, VID, NST),
//! `feats[-1]` (SP), `feats[HINT_LAYER = 2]` (FitNet) and `pooled_feat` (RKD, PKT) are the same
//! tensors as RepDistiller's. Where they differ: mdistiller has no CC; its VID keeps the
//! per-stage `log_scales` in a plain Python list, so they are never optimised (the predicted
//! variance stays at its initial 5.0), whereas RepDistiller trains them (here: trained, as in
//! RepDistiller); its RKD exposes `squared` and `eps` of the distance (defaults equal to
//! RepDistiller's fixed `False`, `1e-12`).

pub mod at;
pub mod cc;
mod config;
/// CRD (RepDistiller `crd/`), checked against its code over two steps.
pub mod crd;
/// CRD as a training method (CE + KD + CRD) owning its heads (parameters) and memory bank (buffers).
pub mod crd_method;
pub mod error;
pub mod factory;
/// Any [`FeatureLoss`] as a training method (CE + KD + β·loss) owning the loss's parameters.
pub mod feature_method;
pub mod fitnet;
/// FitNet as a training method (CE + KD + hint) owning its regressor.
pub mod fitnet_method;
pub mod memory_bank;
pub mod nst;
pub mod pkt;
/// ReviewKD (dvlab-research/ReviewKD), checked against its code.
pub mod review_kd;
/// ReviewKD as a training method (CE + KD + warmed-up HCL) owning its ABF modules.
pub mod review_kd_method;
pub mod rkd;
pub mod shapes;
pub mod sp;
pub mod util;
pub mod vid;

use candle_core::{Result, Tensor};
use kd_core::ModelOutput;

pub use at::{Attention, AttentionConfig};
pub use cc::{Correlation, CorrelationConfig, LinearEmbed};
pub use error::FeatureError;
pub use feature_method::{FeatureMethod, StepWeights};
pub use fitnet::{ConvReg, FitNet, FitNetConfig};
pub use fitnet_method::{FitNetMethod, FitNetMethodConfig};
pub use nst::{NeuronSelectivity, NstConfig};
pub use pkt::{Pkt, PktConfig};
pub use rkd::{Rkd, RkdConfig};
pub use shapes::{FeatureShapes, StageShape};
pub use sp::{Similarity, SimilarityConfig};
pub use vid::{Vid, VidConfig};

/// The CE weight γ of RepDistiller's feature-method runs (`-r`, default 1).
pub const REFERENCE_CE_WEIGHT: f64 = 1.0;
/// The KD weight α of RepDistiller's feature-method runs (`-a 0` in run_cifar_distill.sh).
pub const REFERENCE_KD_WEIGHT: f64 = 0.0;
/// RepDistiller's KD temperature (`--kd_T`, default 4), used when α > 0.
pub const REFERENCE_KD_TEMPERATURE: f64 = 4.0;

/// Which features of student and teacher a method reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taps {
    /// Indices into [`ModelOutput::stage_features`].
    pub stages: Vec<usize>,
    /// Whether [`ModelOutput::embedding`] is read.
    pub embedding: bool,
}

/// A feature distillation criterion between one student and one teacher output. Teacher
/// features are detached inside; the student's features and the method's own parameters get
/// gradients.
pub trait FeatureLoss: Send + Sync {
    /// The method's name as in recipes (`fitnet`, `at`, ...).
    fn name(&self) -> &'static str;
    /// The weight β of the feature term in `γ·CE + α·KD + β·loss`.
    fn beta(&self) -> f64;
    /// The features this method reads.
    fn taps(&self) -> Taps;
    /// The raw feature loss (a scalar), before β.
    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor>;
    /// `β · loss`.
    fn weighted_loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        self.loss(student, teacher)?.affine(self.beta(), 0.0)
    }
}
