//! ShuffleNetV2 (Ma et al., ECCV 2018) in the CIFAR variant the KD literature uses:
//! RepDistiller's `models/ShuffleNetv2.py`, `ShuffleV2` = `ShuffleNetV2(net_size=1)` (CRD /
//! DKD tables: `resnet32x4` → `ShuffleV2`).
//!
//! As the reference (which differs from the paper's ImageNet network):
//! - the stem is a 1×1 conv(3 → 24) + BN + ReLU (`conv1`, `bn1`), no max pool;
//! - stages `layer1..3` of widths 116 / 232 / 464, each a `DownBlock` (both branches stride 2:
//!   left dw3×3 + BN → 1×1 + BN + ReLU, right 1×1 + BN + ReLU → dw3×3 + BN → 1×1 + BN + ReLU;
//!   `conv1..5` / `bn1..5`) then 3 / 7 / 3 `BasicBlock`s (split the channels in half, the second
//!   half through 1×1 + BN + ReLU → dw3×3 + BN → 1×1 + BN + ReLU; `conv1..3` / `bn1..3`), each
//!   block ending with concatenation and a channel shuffle of 2 groups;
//! - `conv2` 1×1 (464 → 1024) + BN + ReLU (`bn2`), average pool, `linear`.
//!
//! Stage features are the maps RepDistiller returns with `is_feat=True` (and `preact=False`)
//! before the embedding: the stem output and the outputs of the three stages. The reference
//! pools with a fixed `avg_pool2d(out, 4)`, which fits only 32×32 inputs (4×4 maps) and equals
//! the global average pool used here there.
//!
//! The reference does not re-initialise anything, so weights take PyTorch's defaults: convs
//! and `linear` uniform `±1/sqrt(fan_in)` (`kaiming_uniform_(a = sqrt(5))`, `fan_in =
//! in/groups · k²`), `linear` bias likewise, BN weight 1 and bias 0.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::cifar_common::{check_rgb, torch_default_conv};
use crate::depthwise::DepthwiseConv2d;
use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};

/// The architectures [`Config::from_arch_name`] knows (RepDistiller's `model_dict` name).
pub const ARCH_NAMES: [&str; 1] = ["ShuffleV2"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub arch: String,
    /// Widths of the three stages and of `conv2`.
    pub out_channels: [usize; 4],
    /// `BasicBlock`s per stage (after its `DownBlock`).
    pub num_blocks: [usize; 3],
    pub num_classes: usize,
}

impl Config {
    /// `ShuffleV2`: RepDistiller's `configs[1]`.
    pub fn shuffle_v2(num_classes: usize) -> Self {
        Self {
            arch: "ShuffleV2".into(),
            out_channels: [116, 232, 464, 1024],
            num_blocks: [3, 7, 3],
            num_classes,
        }
    }

    pub fn from_arch_name(name: &str, num_classes: usize) -> std::result::Result<Self, ModelError> {
        match name {
            "ShuffleV2" => Ok(Self::shuffle_v2(num_classes)),
            _ => Err(ModelError::UnknownArch {
                name: name.to_string(),
                known: ARCH_NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config { arch: self.arch.clone(), message });
        if self.out_channels[..3].iter().any(|&c| c < 2 || c % 2 != 0) || self.out_channels[3] == 0 {
            return fail(format!("stage widths must be even and positive, got {:?}", self.out_channels));
        }
        if self.num_classes == 0 {
            return fail("num_classes must be at least 1".into());
        }
        Ok(())
    }
}

/// A bias-free conv with PyTorch's default init.
fn conv(in_c: usize, out_c: usize, kernel: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(in_c, out_c, kernel, 1, kernel / 2, torch_default_conv(in_c * kernel * kernel), vb)
}

/// A depthwise 3×3 conv (padding 1) with PyTorch's default init (`fan_in = 9`).
fn depthwise(channels: usize, stride: usize, vb: VarBuilder) -> Result<DepthwiseConv2d> {
    DepthwiseConv2d::new(channels, 3, stride, 1, torch_default_conv(9), vb)
}

/// `shuffle(cat([a, b], 1))` with 2 groups in one copy: output channel `2j` is `a[j]`, `2j + 1`
/// is `b[j]` (the reference's view `(N, 2, C/2, H, W)` → permute → reshape).
fn concat_shuffle(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = a.dims4()?;
    Tensor::stack(&[a, b], 2)?.reshape((n, 2 * c, h, w))
}

#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: DepthwiseConv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
}

impl BasicBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let c = channels / 2;
        Ok(Self {
            conv1: conv(c, c, 1, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(c, vb.pp("bn1"))?,
            conv2: depthwise(c, 1, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(c, vb.pp("bn2"))?,
            conv3: conv(c, c, 1, vb.pp("conv3"))?,
            bn3: BatchNorm2d::new(c, vb.pp("bn3"))?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let half = x.dim(1)? / 2;
        let x1 = x.narrow(1, 0, half)?;
        let x2 = x.narrow(1, half, x.dim(1)? - half)?;
        let out = layers::conv_bn(&self.conv1, &self.bn1, &x2, mode, true)?;
        let out = self.bn2.forward(&self.conv2.forward(&out)?, mode)?;
        let out = layers::conv_bn(&self.conv3, &self.bn3, &out, mode, true)?;
        concat_shuffle(&x1, &out)
    }

    fn num_params(&self) -> usize {
        self.conv1.num_params()
            + self.bn1.num_params()
            + self.conv2.num_params()
            + self.bn2.num_params()
            + self.conv3.num_params()
            + self.bn3.num_params()
    }
}

#[derive(Debug, Clone)]
struct DownBlock {
    conv1: DepthwiseConv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    conv4: DepthwiseConv2d,
    bn4: BatchNorm2d,
    conv5: Conv2d,
    bn5: BatchNorm2d,
}

impl DownBlock {
    fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let mid = out_c / 2;
        Ok(Self {
            conv1: depthwise(in_c, 2, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(in_c, vb.pp("bn1"))?,
            conv2: conv(in_c, mid, 1, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(mid, vb.pp("bn2"))?,
            conv3: conv(in_c, mid, 1, vb.pp("conv3"))?,
            bn3: BatchNorm2d::new(mid, vb.pp("bn3"))?,
            conv4: depthwise(mid, 2, vb.pp("conv4"))?,
            bn4: BatchNorm2d::new(mid, vb.pp("bn4"))?,
            conv5: conv(mid, mid, 1, vb.pp("conv5"))?,
            bn5: BatchNorm2d::new(mid, vb.pp("bn5"))?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let left = self.bn1.forward(&self.conv1.forward(x)?, mode)?;
        let left = layers::conv_bn(&self.conv2, &self.bn2, &left, mode, true)?;
        let right = layers::conv_bn(&self.conv3, &self.bn3, x, mode, true)?;
        let right = self.bn4.forward(&self.conv4.forward(&right)?, mode)?;
        let right = layers::conv_bn(&self.conv5, &self.bn5, &right, mode, true)?;
        concat_shuffle(&left, &right)
    }

    fn num_params(&self) -> usize {
        [&self.bn1, &self.bn2, &self.bn3, &self.bn4, &self.bn5].iter().map(|b| b.num_params()).sum::<usize>()
            + self.conv1.num_params()
            + self.conv2.num_params()
            + self.conv3.num_params()
            + self.conv4.num_params()
            + self.conv5.num_params()
    }
}

#[derive(Debug, Clone)]
struct Stage {
    down: DownBlock,
    blocks: Vec<BasicBlock>,
}

/// The CIFAR ShuffleNetV2; see the module docs.
#[derive(Debug, Clone)]
pub struct ShuffleNetV2 {
    config: Config,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Stage>,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    linear: Linear,
    num_params: usize,
}

impl ShuffleNetV2 {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let stem = 24;
        let conv1 = conv(3, stem, 1, vb.pp("conv1"))?;
        let bn1 = BatchNorm2d::new(stem, vb.pp("bn1"))?;
        let mut in_c = stem;
        let mut stages = Vec::with_capacity(3);
        for s in 0..3 {
            let out_c = config.out_channels[s];
            let vb_stage = vb.pp(format!("layer{}", s + 1));
            let down = DownBlock::new(in_c, out_c, vb_stage.pp(0))?;
            let blocks = (0..config.num_blocks[s])
                .map(|i| BasicBlock::new(out_c, vb_stage.pp(i + 1)))
                .collect::<Result<_>>()?;
            stages.push(Stage { down, blocks });
            in_c = out_c;
        }
        let last = config.out_channels[3];
        let conv2 = conv(in_c, last, 1, vb.pp("conv2"))?;
        let bn2 = BatchNorm2d::new(last, vb.pp("bn2"))?;
        let linear = layers::torch_default_linear(last, config.num_classes, vb.pp("linear"))?;
        let num_params = conv1.num_params()
            + bn1.num_params()
            + stages
                .iter()
                .map(|s| s.down.num_params() + s.blocks.iter().map(BasicBlock::num_params).sum::<usize>())
                .sum::<usize>()
            + conv2.num_params()
            + bn2.num_params()
            + layers::linear_num_params(&linear);
        Ok(Self { config: config.clone(), conv1, bn1, stages, conv2, bn2, linear, num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Classifier for ShuffleNetV2 {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        check_rgb(&self.config.arch, input)?;
        let mut x = layers::conv_bn(&self.conv1, &self.bn1, input, mode, true)?;
        let mut stage_features = Vec::with_capacity(4);
        stage_features.push(x.clone());
        for stage in &self.stages {
            x = stage.down.forward(&x, mode)?;
            for block in &stage.blocks {
                x = block.forward(&x, mode)?;
            }
            stage_features.push(x.clone());
        }
        let x = layers::conv_bn(&self.conv2, &self.bn2, &x, mode, true)?;
        let embedding = layers::global_avg_pool(&x)?;
        let logits = layers::apply_linear(&self.linear, &embedding)?;
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
