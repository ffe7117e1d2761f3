//! Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016) as the KD
//! literature uses them on CIFAR: RepDistiller's `models/wrn.py` (`wrn_16_1`, `wrn_16_2`,
//! `wrn_40_1`, `wrn_40_2`; CRD, DKD and ReviewKD tables use `wrn_40_2` → `wrn_16_2` /
//! `wrn_40_1`).
//!
//! conv3x3(3→16), three `NetworkBlock`s (`block1..3`, `.layer.<i>`) of `n = (depth − 4) / 6`
//! pre-activation BasicBlocks with `16k / 32k / 64k` channels (stride 2 at the first block of
//! `block2` and `block3`), then BN + ReLU (`bn1`), global average pool and `fc`. A block is
//! `bn1 → relu → conv1 → bn2 → relu → conv2` plus the input, or, where the width or stride
//! changes, plus `convShortcut` (1×1) applied to the *activated* input, as in the reference.
//! Dropout is 0 in RepDistiller and is not implemented.
//!
//! Stage features are the maps RepDistiller returns with `is_feat=True` before the embedding:
//! the stem conv output and the three block outputs (before the final BN + ReLU). The
//! embedding is the pooled `relu(bn1(block3))`.
//!
//! Initialisation as the reference: convs normal with std `sqrt(2 / (k² · out))` (kaiming
//! fan-out), BN weight 1 and bias 0, `fc` weight PyTorch's default and bias 0.
//!
//! For 64×64 inputs the stem has stride 2 (kd-bench's convention for CIFAR ResNets on
//! Tiny-ImageNet); RepDistiller's fixed `avg_pool2d(out, 8)` only fits 32×32, where it equals
//! the global average pool used here.

use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::cifar_common::{check_rgb, fan_out_normal, linear_zero_bias};
use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};

/// The architectures [`Config::from_arch_name`] knows (RepDistiller's names).
pub const ARCH_NAMES: [&str; 4] = ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name as written in recipes (`wrn_40_2`, ...).
    pub arch: String,
    /// `6n + 4` for `n` blocks per stage.
    pub depth: usize,
    /// Width multiplier `k` of the stages (`16k`, `32k`, `64k` channels).
    pub widen_factor: usize,
    pub num_classes: usize,
    /// 1 for 32×32 inputs, 2 for 64×64.
    #[serde(default = "one")]
    pub stem_stride: usize,
}

fn one() -> usize {
    1
}

impl Config {
    pub fn new(depth: usize, widen_factor: usize, num_classes: usize) -> Self {
        Self { arch: format!("wrn_{depth}_{widen_factor}"), depth, widen_factor, num_classes, stem_stride: 1 }
    }

    /// The configuration for a recipe name; unknown names list the known ones.
    pub fn from_arch_name(name: &str, num_classes: usize) -> std::result::Result<Self, ModelError> {
        let (depth, widen) = match name {
            "wrn_16_1" => (16, 1),
            "wrn_16_2" => (16, 2),
            "wrn_40_1" => (40, 1),
            "wrn_40_2" => (40, 2),
            _ => {
                return Err(ModelError::UnknownArch {
                    name: name.to_string(),
                    known: ARCH_NAMES.iter().map(|s| s.to_string()).collect(),
                })
            }
        };
        Ok(Self::new(depth, widen, num_classes))
    }

    pub fn with_stem_stride(mut self, stem_stride: usize) -> Self {
        self.stem_stride = stem_stride;
        self
    }

    /// Blocks per stage.
    pub fn blocks_per_stage(&self) -> usize {
        self.depth.saturating_sub(4) / 6
    }

    /// Channels of the stem and the three stages.
    pub fn channels(&self) -> [usize; 4] {
        let k = self.widen_factor;
        [16, 16 * k, 32 * k, 64 * k]
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config { arch: self.arch.clone(), message });
        if self.depth < 10 || !(self.depth - 4).is_multiple_of(6) {
            return fail(format!("depth must be 6n + 4 with n >= 1, got {}", self.depth));
        }
        if self.widen_factor == 0 || self.num_classes == 0 || self.stem_stride == 0 {
            return fail("widen_factor, num_classes and stem_stride must be at least 1".into());
        }
        Ok(())
    }
}

/// A pre-activation wide BasicBlock.
#[derive(Debug, Clone)]
struct WideBlock {
    bn1: BatchNorm2d,
    conv1: Conv2d,
    bn2: BatchNorm2d,
    conv2: Conv2d,
    /// `convShortcut`, present where input and output widths differ.
    shortcut: Option<Conv2d>,
}

impl WideBlock {
    fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let init = fan_out_normal();
        let shortcut = if in_c == out_c {
            None
        } else {
            Some(Conv2d::new(in_c, out_c, 1, stride, 0, init, vb.pp("convShortcut"))?)
        };
        Ok(Self {
            bn1: BatchNorm2d::new(in_c, vb.pp("bn1"))?,
            conv1: Conv2d::new(in_c, out_c, 3, stride, 1, init, vb.pp("conv1"))?,
            bn2: BatchNorm2d::new(out_c, vb.pp("bn2"))?,
            conv2: Conv2d::new(out_c, out_c, 3, 1, 1, init, vb.pp("conv2"))?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let act = self.bn1.forward_relu(x, mode)?;
        let out = layers::conv_bn(&self.conv1, &self.bn2, &act, mode, true)?;
        let out = self.conv2.forward(&out)?;
        match &self.shortcut {
            // With equal widths the reference adds the raw input (its stride is 1 there).
            None => out + x,
            Some(conv) => out + conv.forward(&act)?,
        }
    }

    fn num_params(&self) -> usize {
        self.bn1.num_params()
            + self.conv1.num_params()
            + self.bn2.num_params()
            + self.conv2.num_params()
            + self.shortcut.as_ref().map_or(0, Conv2d::num_params)
    }
}

/// A Wide ResNet; see the module docs.
#[derive(Debug, Clone)]
pub struct WideResNet {
    config: Config,
    conv1: Conv2d,
    /// `block1..3`.
    stages: Vec<Vec<WideBlock>>,
    bn1: BatchNorm2d,
    fc: Linear,
    num_params: usize,
}

impl WideResNet {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let ch = config.channels();
        let conv1 = Conv2d::new(3, ch[0], 3, config.stem_stride, 1, fan_out_normal(), vb.pp("conv1"))?;
        let mut stages = Vec::with_capacity(3);
        let mut in_c = ch[0];
        for s in 0..3 {
            let vb_stage = vb.pp(format!("block{}", s + 1)).pp("layer");
            let out_c = ch[s + 1];
            let mut blocks = Vec::with_capacity(config.blocks_per_stage());
            for b in 0..config.blocks_per_stage() {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let c = if b == 0 { in_c } else { out_c };
                blocks.push(WideBlock::new(c, out_c, stride, vb_stage.pp(b))?);
            }
            stages.push(blocks);
            in_c = out_c;
        }
        let bn1 = BatchNorm2d::new(in_c, vb.pp("bn1"))?;
        // PyTorch's default weight (uniform ±1/sqrt(fan_in)); the reference zeroes the bias.
        let bound = 1.0 / (in_c as f64).sqrt();
        let fc =
            linear_zero_bias(in_c, config.num_classes, Init::Uniform { lo: -bound, up: bound }, vb.pp("fc"))?;
        let num_params = conv1.num_params()
            + stages.iter().flatten().map(WideBlock::num_params).sum::<usize>()
            + bn1.num_params()
            + layers::linear_num_params(&fc);
        Ok(Self { config: config.clone(), conv1, stages, bn1, fc, num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Width of the pooled embedding.
    pub fn embedding_dim(&self) -> usize {
        self.config.channels()[3]
    }
}

impl Classifier for WideResNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        check_rgb(&self.config.arch, input)?;
        let mut x = self.conv1.forward(input)?;
        let mut stage_features = Vec::with_capacity(4);
        stage_features.push(x.clone());
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x, mode)?;
            }
            stage_features.push(x.clone());
        }
        let x = self.bn1.forward_relu(&x, mode)?;
        let embedding = layers::global_avg_pool(&x)?;
        let logits = layers::apply_linear(&self.fc, &embedding)?;
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
