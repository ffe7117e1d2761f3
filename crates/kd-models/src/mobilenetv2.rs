//! MobileNetV2 (Sandler et al., CVPR 2018) in the CIFAR variant the KD literature uses:
//! RepDistiller's `models/mobilenetv2.py`, `mobile_half` = `MobileNetV2(T=6, width_mult=0.5)`,
//! registered as `MobileNetV2` (CRD / DKD tables: `vgg13` → `MobileNetV2`, ResNet-50 →
//! `MobileNetV2`).
//!
//! Differences from torchvision's MobileNetV2 that the reference has and this follows:
//! - the stem `conv1` is conv3×3(3 → 32·w, stride 2) + BN + ReLU (`conv1.0`, `conv1.1`);
//! - every inverted residual, the `t = 1` one included, is expand 1×1 → depthwise 3×3 →
//!   project 1×1 (`conv.0/1`, `conv.3/4`, `conv.6/7`), ReLU (not ReLU6) after the first two;
//! - stages use the table `(t, c, n, s)` = (1,16,1,1), (T,24,2,1), (T,32,3,2), (T,64,4,2),
//!   (T,96,3,1), (T,160,3,2), (T,320,1,1) with widths `int(c·w)`, as `blocks.<s>.<i>`;
//! - `conv2` is 1×1 to 1280 channels (`int(1280·w)` only for `w > 1`) + BN + ReLU, then the
//!   average pool and `classifier.0` (`Linear(1280, classes)`), no dropout.
//!
//! A residual is added where stride is 1 and widths match. Stage features are the maps
//! RepDistiller returns with `is_feat=True` before the embedding: the stem output and the
//! outputs of stages 1, 2, 4 and 6 (0-based). The reference pools with
//! `AvgPool2d(input_size / 16, ceil_mode=True)` sized for its `input_size`, which for inputs
//! of a multiple of 32 pixels is the global average pool used here.
//!
//! Initialisation as the reference: convs (depthwise included) normal with std
//! `sqrt(2 / (k² · out))`, BN weight 1 and bias 0, classifier weight normal std 0.01, bias 0.

use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::cifar_common::{check_rgb, fan_out_normal, linear_zero_bias};
use crate::depthwise::DepthwiseConv2d;
use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};

/// The architectures [`Config::from_arch_name`] knows (RepDistiller's `model_dict` name).
pub const ARCH_NAMES: [&str; 1] = ["MobileNetV2"];

/// RepDistiller's stage table: expansion (`None` = `T`), channels, blocks, first stride.
const STAGES: [(Option<usize>, usize, usize, usize); 7] = [
    (Some(1), 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
];

/// Stages (0-based) whose outputs are stage features, after the stem.
const FEATURE_STAGES: [usize; 4] = [1, 2, 4, 6];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub arch: String,
    /// Expansion ratio `T` of all stages but the first.
    pub expand_ratio: usize,
    /// Width multiplier `w`.
    pub width_mult: f64,
    pub num_classes: usize,
}

impl Config {
    /// `mobile_half`: `T = 6`, `w = 0.5`.
    pub fn mobile_half(num_classes: usize) -> Self {
        Self { arch: "MobileNetV2".into(), expand_ratio: 6, width_mult: 0.5, num_classes }
    }

    pub fn from_arch_name(name: &str, num_classes: usize) -> std::result::Result<Self, ModelError> {
        match name {
            "MobileNetV2" => Ok(Self::mobile_half(num_classes)),
            _ => Err(ModelError::UnknownArch {
                name: name.to_string(),
                known: ARCH_NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    /// `int(c · w)` as Python truncates it.
    fn scaled(&self, c: usize) -> usize {
        (c as f64 * self.width_mult) as usize
    }

    fn last_channel(&self) -> usize {
        if self.width_mult > 1.0 {
            self.scaled(1280)
        } else {
            1280
        }
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config { arch: self.arch.clone(), message });
        if self.expand_ratio == 0 || self.num_classes == 0 {
            return fail("expand_ratio and num_classes must be at least 1".into());
        }
        if !(self.width_mult.is_finite() && self.scaled(16) >= 1) {
            return fail(format!("width_mult {} leaves a stage without channels", self.width_mult));
        }
        Ok(())
    }
}

/// Expand → depthwise → project, with a residual where shapes allow.
#[derive(Debug, Clone)]
struct InvertedResidual {
    expand: Conv2d,
    bn_expand: BatchNorm2d,
    depthwise: DepthwiseConv2d,
    bn_depthwise: BatchNorm2d,
    project: Conv2d,
    bn_project: BatchNorm2d,
    residual: bool,
}

impl InvertedResidual {
    fn new(in_c: usize, out_c: usize, stride: usize, expand_ratio: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = in_c * expand_ratio;
        let init = fan_out_normal();
        let vb = vb.pp("conv");
        Ok(Self {
            expand: Conv2d::new(in_c, hidden, 1, 1, 0, init, vb.pp(0))?,
            bn_expand: BatchNorm2d::new(hidden, vb.pp(1))?,
            depthwise: DepthwiseConv2d::new(hidden, 3, stride, 1, init, vb.pp(3))?,
            bn_depthwise: BatchNorm2d::new(hidden, vb.pp(4))?,
            project: Conv2d::new(hidden, out_c, 1, 1, 0, init, vb.pp(6))?,
            bn_project: BatchNorm2d::new(out_c, vb.pp(7))?,
            residual: stride == 1 && in_c == out_c,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = layers::conv_bn(&self.expand, &self.bn_expand, x, mode, true)?;
        let h = self.bn_depthwise.forward_relu(&self.depthwise.forward(&h)?, mode)?;
        let h = layers::conv_bn(&self.project, &self.bn_project, &h, mode, false)?;
        if self.residual {
            x + h
        } else {
            Ok(h)
        }
    }

    fn num_params(&self) -> usize {
        self.expand.num_params()
            + self.bn_expand.num_params()
            + self.depthwise.num_params()
            + self.bn_depthwise.num_params()
            + self.project.num_params()
            + self.bn_project.num_params()
    }
}

/// The CIFAR MobileNetV2; see the module docs.
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    config: Config,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<InvertedResidual>>,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    classifier: Linear,
    num_params: usize,
}

impl MobileNetV2 {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let init = fan_out_normal();
        let mut in_c = config.scaled(32);
        let conv1 = Conv2d::new(3, in_c, 3, 2, 1, init, vb.pp("conv1").pp(0))?;
        let bn1 = BatchNorm2d::new(in_c, vb.pp("conv1").pp(1))?;
        let mut stages = Vec::with_capacity(STAGES.len());
        for (s, &(t, c, n, first_stride)) in STAGES.iter().enumerate() {
            let out_c = config.scaled(c);
            let t = t.unwrap_or(config.expand_ratio);
            let vb_stage = vb.pp("blocks").pp(s);
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if i == 0 { first_stride } else { 1 };
                blocks.push(InvertedResidual::new(in_c, out_c, stride, t, vb_stage.pp(i))?);
                in_c = out_c;
            }
            stages.push(blocks);
        }
        let last = config.last_channel();
        let conv2 = Conv2d::new(in_c, last, 1, 1, 0, init, vb.pp("conv2").pp(0))?;
        let bn2 = BatchNorm2d::new(last, vb.pp("conv2").pp(1))?;
        let head_init = Init::Randn { mean: 0.0, stdev: 0.01 };
        let classifier = linear_zero_bias(last, config.num_classes, head_init, vb.pp("classifier").pp(0))?;
        let num_params = conv1.num_params()
            + bn1.num_params()
            + stages.iter().flatten().map(InvertedResidual::num_params).sum::<usize>()
            + conv2.num_params()
            + bn2.num_params()
            + layers::linear_num_params(&classifier);
        Ok(Self { config: config.clone(), conv1, bn1, stages, conv2, bn2, classifier, num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Classifier for MobileNetV2 {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        check_rgb(&self.config.arch, input)?;
        let mut x = layers::conv_bn(&self.conv1, &self.bn1, input, mode, true)?;
        let mut stage_features = Vec::with_capacity(1 + FEATURE_STAGES.len());
        stage_features.push(x.clone());
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = block.forward(&x, mode)?;
            }
            if FEATURE_STAGES.contains(&s) {
                stage_features.push(x.clone());
            }
        }
        let x = layers::conv_bn(&self.conv2, &self.bn2, &x, mode, true)?;
        let embedding = layers::global_avg_pool(&x)?;
        let logits = layers::apply_linear(&self.classifier, &embedding)?;
        Ok(ModelOutput { logits, stage_features, embedding })
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn arch(&self) -> &str {
        &self.config.arch
    }

    fn num_params(&self) -> usize {
        self.num_params
    }
}
