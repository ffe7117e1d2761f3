//! FitNet (Romero et al., *FitNets: Hints for Thin Deep Nets*, ICLR 2015) as RepDistiller runs it:
//! the student's hint stage goes through a learned [`ConvReg`] and is fitted to the teacher's
//! same stage by MSE (`distiller_zoo/FitNet.py` `HintLoss`, `models/util.py` `ConvReg`,
//! train_student.py `hint`), β = 100, `hint_layer = 2` (RepDistiller's `feat[2]`, the second stage:
//! our `hint_stage = 1`).
//!
//! Paper and code differ: the paper trains in two stages (hint pre-training of the lower student
//! half, then KD); RepDistiller (and mdistiller) add the hint term to CE in one stage. We follow
//! the code. mdistiller's FitNet is the same (`ConvReg`, `HINT_LAYER = 2`, weight 100).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use kd_core::ModelOutput;
use serde::{Deserialize, Serialize};

use crate::util::{stage, torch_default_init};
use crate::{config, FeatureError, FeatureLoss, FeatureShapes, StageShape, Taps};

const METHOD: &str = "fitnet";
/// `nn.BatchNorm2d`'s default `eps`.
const BN_EPS: f64 = 1e-5;

/// `[distill]` of `method = "fitnet"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitNetConfig {
    /// Weight β of the hint loss (RepDistiller `-b 100`).
    pub beta: f64,
    /// Stage whose output is the hint, 0-based into `stage_features` (RepDistiller's
    /// `--hint_layer 2` = `feat[2]` = our stage 1).
    pub hint_stage: usize,
}

impl Default for FitNetConfig {
    fn default() -> Self {
        Self { beta: 100.0, hint_stage: 1 }
    }
}

impl FitNetConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, FeatureError> {
        let cfg: Self = config::parse(METHOD, table)?;
        config::weight(METHOD, "beta", cfg.beta)?;
        Ok(cfg)
    }
}

/// How [`ConvReg`] maps the student's resolution onto the teacher's (RepDistiller's three cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resample {
    /// `s_H == 2·t_H`: 3×3 conv, stride 2, padding 1.
    Halve,
    /// `2·s_H == t_H`: 4×4 transposed conv, stride 2, padding 1.
    Double,
    /// `s_H >= t_H`: valid conv with kernel `(1 + s_H − t_H, 1 + s_W − t_W)` (1×1 when equal).
    Shrink,
}

/// RepDistiller's `ConvReg` (`use_relu=True`, as train_student.py builds it): conv (or transposed
/// conv) with bias, `BatchNorm2d`, ReLU, from the student's hint shape to the teacher's.
/// Parameter names follow its state dict: `conv.weight`, `conv.bias`, `bn.weight`, `bn.bias`.
///
/// The batch norm normalises with the batch statistics: the regressor only runs inside the
/// training loss (train mode in RepDistiller), so running statistics would never be read and are
/// not kept.
#[derive(Debug, Clone)]
pub struct ConvReg {
    resample: Resample,
    conv_weight: Tensor,
    conv_bias: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
}

impl ConvReg {
    pub fn new(
        student: StageShape,
        teacher: StageShape,
        vb: VarBuilder,
    ) -> std::result::Result<Self, FeatureError> {
        let (s, t) = (student, teacher);
        let resample = if s.height == 2 * t.height {
            Resample::Halve
        } else if 2 * s.height == t.height {
            Resample::Double
        } else if s.height >= t.height && s.width >= t.width {
            Resample::Shrink
        } else {
            return Err(FeatureError::shape(
                METHOD,
                format!(
                    "no ConvReg maps student hint {s} onto teacher hint {t} (RepDistiller has none either)"
                ),
            ));
        };
        let (weight_shape, fan_in, out_hw) = match resample {
            Resample::Halve => (
                (t.channels, s.channels, 3, 3),
                s.channels * 9,
                ((s.height - 1) / 2 + 1, (s.width - 1) / 2 + 1),
            ),
            // PyTorch's fan-in of a ConvTranspose2d weight `(in, out, k, k)` is `out·k·k`.
            Resample::Double => {
                ((s.channels, t.channels, 4, 4), t.channels * 16, (2 * s.height, 2 * s.width))
            }
            Resample::Shrink => {
                let (kh, kw) = (1 + s.height - t.height, 1 + s.width - t.width);
                ((t.channels, s.channels, kh, kw), s.channels * kh * kw, (t.height, t.width))
            }
        };
        if out_hw != (t.height, t.width) {
            return Err(FeatureError::shape(
                METHOD,
                format!(
                    "ConvReg maps student hint {s} to {}x{}, not the teacher's {}x{} (non-square maps?)",
                    out_hw.0, out_hw.1, t.height, t.width
                ),
            ));
        }
        let init = torch_default_init(fan_in);
        let get = |shape: &[usize], name: &str, init: Init| {
            vb.get_with_hints(shape, name, init).map_err(FeatureError::candle(METHOD))
        };
        let conv_weight =
            get(&[weight_shape.0, weight_shape.1, weight_shape.2, weight_shape.3], "conv.weight", init)?;
        let conv_bias = get(&[t.channels], "conv.bias", init)?;
        let bn_weight = get(&[t.channels], "bn.weight", Init::Const(1.0))?;
        let bn_bias = get(&[t.channels], "bn.bias", Init::Const(0.0))?;
        Ok(Self { resample, conv_weight, conv_bias, bn_weight, bn_bias })
    }
}

impl Module for ConvReg {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match self.resample {
            Resample::Halve => x.conv2d(&self.conv_weight, 1, 2, 1, 1)?,
            Resample::Double => x.conv_transpose2d(&self.conv_weight, 1, 0, 2, 1)?,
            Resample::Shrink => x.conv2d(&self.conv_weight, 0, 1, 1, 1)?,
        };
        let c = self.conv_bias.dim(0)?;
        let y = y.broadcast_add(&self.conv_bias.reshape((1, c, 1, 1))?)?;
        // Training-mode BatchNorm2d: batch mean and biased variance per channel.
        let mean = y.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        let centred = y.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        let normed = centred.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        let y = normed
            .broadcast_mul(&self.bn_weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bn_bias.reshape((1, c, 1, 1))?)?;
        y.relu()
    }
}

impl ConvReg {
    /// FitNet's hint loss for one pair of hint maps: `MSE(ConvReg(student), teacher)`, the mean
    /// over all elements, the teacher's map detached (RepDistiller's `HintLoss`).
    pub fn hint_loss(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        (self.forward(student)? - teacher.detach())?.sqr()?.mean_all()
    }
}

/// FitNet's hint loss: `MSE(ConvReg(student[h]), teacher[h])`, the mean over all elements.
#[derive(Debug, Clone)]
pub struct FitNet {
    beta: f64,
    hint_stage: usize,
    regressor: ConvReg,
}

impl FitNet {
    /// Builds the regressor under `vb` for the hint stage's student and teacher shapes.
    pub fn new(
        cfg: &FitNetConfig,
        student: &FeatureShapes,
        teacher: &FeatureShapes,
        vb: VarBuilder,
    ) -> std::result::Result<Self, FeatureError> {
        let h = cfg.hint_stage;
        for (role, shapes) in [("student", student), ("teacher", teacher)] {
            if h >= shapes.stages.len() {
                return Err(FeatureError::shape(
                    METHOD,
                    format!("hint_stage = {h}, but the {role} has {} stages (0-based)", shapes.stages.len()),
                ));
            }
        }
        let regressor = ConvReg::new(student.stages[h], teacher.stages[h], vb)?;
        Ok(Self { beta: cfg.beta, hint_stage: h, regressor })
    }

    pub fn regressor(&self) -> &ConvReg {
        &self.regressor
    }
}

impl FeatureLoss for FitNet {
    fn name(&self) -> &'static str {
        METHOD
    }

    fn beta(&self) -> f64 {
        self.beta
    }

    fn taps(&self) -> Taps {
        Taps { stages: vec![self.hint_stage], embedding: false }
    }

    fn loss(&self, student: &ModelOutput, teacher: &ModelOutput) -> Result<Tensor> {
        let s = stage(METHOD, "student", student, self.hint_stage)?;
        let t = stage(METHOD, "teacher", teacher, self.hint_stage)?;
        self.regressor.hint_loss(s, t)
    }
}
