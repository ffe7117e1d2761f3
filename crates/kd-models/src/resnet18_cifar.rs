//! ResNet-18 for 32×32 inputs, as the CIFAR KD literature uses it (kuangliu/pytorch-cifar,
//! RepDistiller's `ResNet18`, and the Be-Your-Own-Teacher re-implementation's
//! `multi_resnet18_kd` backbone): a 3×3 stride-1 stem convolution with 64 channels and no max
//! pool, four stages of two BasicBlocks with 64/128/256/512 channels (stride 2 at the first
//! block of stages 2–4), "option B" shortcuts (1×1 conv + BN) wherever the shape changes,
//! global average pool and a linear head.
//!
//! Tensor names follow torchvision (and the BYOT re-implementation): `conv1`, `bn1`,
//! `layer{s}.{b}.conv1/bn1/conv2/bn2`, shortcuts `layer{s}.{b}.downsample.0/1`, head `fc`.
//! Initialisation as torchvision / BYOT: convolutions kaiming-normal (fan-out, ReLU gain),
//! batch norm weight 1 and bias 0, the head PyTorch's default `nn.Linear` init.
//! With 100 classes it has 11,220,132 trainable parameters (11.22M, as BYOT and mmrazor report).

use candle_core::{Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};
use crate::resnet_cifar::{forward_resnet, BasicBlock, Shortcut};

/// The architecture names this module builds.
pub const ARCH_NAMES: [&str; 1] = ["resnet18"];

/// Shape of a BasicBlock ResNet for small images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Name as written in recipes (`resnet18`).
    pub arch: String,
    /// Channels of the stem convolution.
    pub stem_width: usize,
    /// Channels of each stage; stages after the first start with stride 2.
    pub widths: Vec<usize>,
    /// BasicBlocks per stage (same length as `widths`).
    pub blocks: Vec<usize>,
    pub num_classes: usize,
    /// Stride of the stem convolution: 1 for 32×32 inputs, 2 for 64×64.
    pub stem_stride: usize,
}

impl Config {
    /// ResNet-18: BasicBlocks `[2, 2, 2, 2]`, widths 64/128/256/512.
    pub fn resnet18(num_classes: usize) -> Self {
        Self {
            arch: "resnet18".into(),
            stem_width: 64,
            widths: vec![64, 128, 256, 512],
            blocks: vec![2, 2, 2, 2],
            num_classes,
            stem_stride: 1,
        }
    }

    /// The configuration for a recipe name.
    pub fn from_arch_name(name: &str, num_classes: usize) -> std::result::Result<Self, ModelError> {
        match name {
            "resnet18" => Ok(Self::resnet18(num_classes)),
            _ => Err(ModelError::UnknownArch {
                name: name.to_string(),
                known: ARCH_NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    pub fn with_stem_stride(mut self, stem_stride: usize) -> Self {
        self.stem_stride = stem_stride;
        self
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config { arch: self.arch.clone(), message });
        if self.widths.is_empty() || self.widths.contains(&0) || self.stem_width == 0 {
            return fail(format!(
                "widths must be non-empty and positive, got stem {} and stages {:?}",
                self.stem_width, self.widths
            ));
        }
        if self.blocks.len() != self.widths.len() || self.blocks.contains(&0) {
            return fail(format!(
                "blocks must give a positive block count for each of the {} stages, got {:?}",
                self.widths.len(),
                self.blocks
            ));
        }
        if self.num_classes == 0 {
            return fail("num_classes must be at least 1".into());
        }
        if self.stem_stride == 0 {
            return fail("stem_stride must be at least 1".into());
        }
        Ok(())
    }
}

fn conv_init() -> Init {
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU }
}

/// ResNet-18 (or any BasicBlock ResNet) for CIFAR-sized images; see the module docs.
#[derive(Debug, Clone)]
pub struct ResNet18Cifar {
    config: Config,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stages: Vec<Vec<BasicBlock>>,
    fc: Linear,
    num_params: usize,
}

impl ResNet18Cifar {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let conv1 = Conv2d::new(3, config.stem_width, 3, config.stem_stride, 1, conv_init(), vb.pp("conv1"))?;
        let bn1 = BatchNorm2d::new(config.stem_width, vb.pp("bn1"))?;
        let mut in_c = config.stem_width;
        let mut stages = Vec::with_capacity(config.widths.len());
        for (s, (&width, &n)) in config.widths.iter().zip(&config.blocks).enumerate() {
            let vb_stage = vb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::build(
                    in_c,
                    width,
                    stride,
                    Shortcut::OptionB,
                    conv_init(),
                    vb_stage.pp(b),
                )?);
                in_c = width;
            }
            stages.push(blocks);
        }
        let fc = layers::torch_default_linear(in_c, config.num_classes, vb.pp("fc"))?;
        let num_params = conv1.num_params()
            + bn1.num_params()
            + stages.iter().flatten().map(BasicBlock::num_params).sum::<usize>()
            + layers::linear_num_params(&fc);
        Ok(Self { config: config.clone(), conv1, bn1, stages, fc, num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn head(&self) -> &Linear {
        &self.fc
    }
}

impl Classifier for ResNet18Cifar {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        forward_resnet(&self.config.arch, (&self.conv1, &self.bn1), &self.stages, &self.fc, input, mode)
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
