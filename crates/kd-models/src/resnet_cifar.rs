//! CIFAR ResNets (He et al. 2016, section 4.2) as the KD literature uses them:
//!
//! - the akamaster/pytorch_resnet_cifar10 family `resnet8/14/20/32/44/56/110`: conv3x3(3→16) +
//!   BN + ReLU, three stages of `n = (depth - 2) / 6` BasicBlocks with 16/32/64 channels, stride
//!   2 at the first block of stages 2 and 3, parameter-free "option A" shortcuts
//!   (`x[:, :, ::2, ::2]` zero-padded in channels), global average pool, `linear`;
//! - RepDistiller's (CRD) `resnet8x4` / `resnet32x4`: stem 32 channels, stages 64/128/256,
//!   "option B" shortcuts (1×1 conv + BN, named `downsample.0` / `downsample.1`) wherever the
//!   shape changes, head named `fc`;
//! - RepDistiller's 16/32/64 ResNets with those option-B shortcuts, `resnet20b/32b/44b/56b/110b`
//!   (RepDistiller's `resnet20` ... `resnet110` in models/resnet.py, `ResNet(depth, [16, 16, 32,
//!   64])`; the trailing `b` keeps them apart from the akamaster option-A names, which committed
//!   results use): conv3x3(3→16) `conv1` without bias, `bn1`, `layer1..3`, `downsample.0` (1×1
//!   conv, stride 2) + `downsample.1` (BN) on the first block of `layer2` and `layer3`, `fc`;
//! - the same with a biased stem, `resnet20b-stem-bias` ... `resnet110b-stem-bias`: the
//!   torchvision-style layout of third-party CIFAR checkpoints whose `conv1` is
//!   `nn.Conv2d(3, 16, 3, padding=1)` with PyTorch's default `bias=True` (e.g.
//!   020118/resnet_cifar100-'s `resnet_cifar.py`). The bias is an explicit part of the name
//!   rather than guessed from a file, so a recipe alone fixes the variables (a model trained
//!   from scratch and a teacher read from a file agree); a file that has (or lacks) `conv1.bias`
//!   is refused with a message naming the other architecture (see [`crate::layout`]).
//!
//! Every family reports the output of each stage (`layer1..3`, after the final ReLU) as its
//! stage features and the global average pool of the last stage as its embedding (RepDistiller's
//! `f1..f3` and `f4`).
//!
//! Tensor names are PyTorch's `state_dict` names, so published checkpoints load as they are.

use candle_core::{Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};

/// How a block's shortcut matches the residual when the shape changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shortcut {
    /// Subsample by the stride and zero-pad the new channels (no parameters).
    OptionA,
    /// 1×1 convolution with the stride, then batch norm.
    OptionB,
}

/// Whose conventions a network follows: head name and initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Style {
    /// akamaster: head `linear`; convs and head weight kaiming-normal (fan-in).
    Akamaster,
    /// RepDistiller: head `fc` with PyTorch's default init; convs kaiming-normal (fan-out).
    RepDistiller,
}

impl Style {
    pub fn head_name(self) -> &'static str {
        match self {
            Style::Akamaster => "linear",
            Style::RepDistiller => "fc",
        }
    }

    /// The classifier head of this style: `in_c` pooled features → `num_classes` logits.
    pub fn head(self, in_c: usize, num_classes: usize, vb: VarBuilder) -> Result<Linear> {
        let vb = vb.pp(self.head_name());
        match self {
            Style::Akamaster => layers::linear_with_init(
                in_c,
                num_classes,
                Init::Kaiming {
                    dist: NormalOrUniform::Normal,
                    fan: FanInOut::FanIn,
                    non_linearity: NonLinearity::ReLU,
                },
                vb,
            ),
            Style::RepDistiller => layers::torch_default_linear(in_c, num_classes, vb),
        }
    }

    pub fn conv_init(self) -> Init {
        let fan = match self {
            Style::Akamaster => FanInOut::FanIn,
            Style::RepDistiller => FanInOut::FanOut,
        };
        Init::Kaiming { dist: NormalOrUniform::Normal, fan, non_linearity: NonLinearity::ReLU }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Name as written in recipes (`resnet20`, `resnet8x4`, ...).
    pub arch: String,
    /// `6n + 2` for `n` BasicBlocks per stage.
    pub depth: usize,
    /// Channels of the stem convolution.
    pub stem_width: usize,
    /// Channels of each stage; stages after the first start with stride 2.
    pub widths: Vec<usize>,
    pub shortcut: Shortcut,
    pub style: Style,
    pub num_classes: usize,
    /// Stride of the stem convolution: 1 for 32×32 inputs, 2 for 64×64 (Tiny-ImageNet) so the
    /// stages see the same resolutions.
    pub stem_stride: usize,
    /// Whether the stem convolution has a bias (`conv1.bias`); only the `-stem-bias` names.
    #[serde(default)]
    pub stem_bias: bool,
}

/// The architectures [`Config::from_arch_name`] knows.
pub const ARCH_NAMES: [&str; 19] = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "resnet20b",
    "resnet32b",
    "resnet44b",
    "resnet56b",
    "resnet110b",
    "resnet20b-stem-bias",
    "resnet32b-stem-bias",
    "resnet44b-stem-bias",
    "resnet56b-stem-bias",
    "resnet110b-stem-bias",
];

/// Depths of the option-B 16/32/64 family (`resnet{depth}b`, `resnet{depth}b-stem-bias`).
pub const OPTION_B_DEPTHS: [usize; 5] = [20, 32, 44, 56, 110];

/// Suffix of the option-B names whose stem convolution has a bias.
pub const STEM_BIAS_SUFFIX: &str = "-stem-bias";

impl Config {
    /// akamaster-style ResNet of the given depth: widths 16/32/64, option A.
    pub fn akamaster(depth: usize, num_classes: usize) -> Self {
        Self {
            arch: format!("resnet{depth}"),
            depth,
            stem_width: 16,
            widths: vec![16, 32, 64],
            shortcut: Shortcut::OptionA,
            style: Style::Akamaster,
            num_classes,
            stem_stride: 1,
            stem_bias: false,
        }
    }

    /// RepDistiller-style ResNet with `num_filters = [stem, w1, w2, w3]`, option B.
    pub fn rep_distiller(arch: &str, depth: usize, num_filters: [usize; 4], num_classes: usize) -> Self {
        Self {
            arch: arch.to_string(),
            depth,
            stem_width: num_filters[0],
            widths: num_filters[1..].to_vec(),
            shortcut: Shortcut::OptionB,
            style: Style::RepDistiller,
            num_classes,
            stem_stride: 1,
            stem_bias: false,
        }
    }

    /// RepDistiller's 16/32/64 ResNet of the given depth with option-B shortcuts
    /// (`resnet{depth}b`), or with a biased stem (`resnet{depth}b-stem-bias`).
    pub fn option_b(depth: usize, stem_bias: bool, num_classes: usize) -> Self {
        let suffix = if stem_bias { STEM_BIAS_SUFFIX } else { "" };
        let mut cfg =
            Self::rep_distiller(&format!("resnet{depth}b{suffix}"), depth, [16, 16, 32, 64], num_classes);
        cfg.stem_bias = stem_bias;
        cfg
    }

    pub fn resnet8(num_classes: usize) -> Self {
        Self::akamaster(8, num_classes)
    }
    pub fn resnet14(num_classes: usize) -> Self {
        Self::akamaster(14, num_classes)
    }
    pub fn resnet20(num_classes: usize) -> Self {
        Self::akamaster(20, num_classes)
    }
    pub fn resnet32(num_classes: usize) -> Self {
        Self::akamaster(32, num_classes)
    }
    pub fn resnet44(num_classes: usize) -> Self {
        Self::akamaster(44, num_classes)
    }
    pub fn resnet56(num_classes: usize) -> Self {
        Self::akamaster(56, num_classes)
    }
    pub fn resnet110(num_classes: usize) -> Self {
        Self::akamaster(110, num_classes)
    }
    pub fn resnet8x4(num_classes: usize) -> Self {
        Self::rep_distiller("resnet8x4", 8, [32, 64, 128, 256], num_classes)
    }
    pub fn resnet32x4(num_classes: usize) -> Self {
        Self::rep_distiller("resnet32x4", 32, [32, 64, 128, 256], num_classes)
    }

    /// The configuration for a recipe name; unknown names list the known ones.
    pub fn from_arch_name(name: &str, num_classes: usize) -> std::result::Result<Self, ModelError> {
        let config = match name {
            "resnet8" => Self::resnet8(num_classes),
            "resnet14" => Self::resnet14(num_classes),
            "resnet20" => Self::resnet20(num_classes),
            "resnet32" => Self::resnet32(num_classes),
            "resnet44" => Self::resnet44(num_classes),
            "resnet56" => Self::resnet56(num_classes),
            "resnet110" => Self::resnet110(num_classes),
            "resnet8x4" => Self::resnet8x4(num_classes),
            "resnet32x4" => Self::resnet32x4(num_classes),
            _ => match Self::parse_option_b(name) {
                Some((depth, stem_bias)) => Self::option_b(depth, stem_bias, num_classes),
                None => {
                    return Err(ModelError::UnknownArch {
                        name: name.to_string(),
                        known: ARCH_NAMES.iter().map(|s| s.to_string()).collect(),
                    })
                }
            },
        };
        Ok(config)
    }

    /// `resnet{depth}b[-stem-bias]` for a depth of [`OPTION_B_DEPTHS`] → `(depth, stem_bias)`.
    fn parse_option_b(name: &str) -> Option<(usize, bool)> {
        let (base, stem_bias) = match name.strip_suffix(STEM_BIAS_SUFFIX) {
            Some(base) => (base, true),
            None => (name, false),
        };
        OPTION_B_DEPTHS.iter().find(|d| base == format!("resnet{d}b")).map(|&d| (d, stem_bias))
    }

    pub fn with_stem_stride(mut self, stem_stride: usize) -> Self {
        self.stem_stride = stem_stride;
        self
    }

    /// BasicBlocks per stage.
    pub fn blocks_per_stage(&self) -> usize {
        (self.depth.saturating_sub(2)) / 6
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config { arch: self.arch.clone(), message });
        if self.depth < 8 || !(self.depth - 2).is_multiple_of(6) {
            return fail(format!("depth must be 6n + 2 with n >= 1, got {}", self.depth));
        }
        if self.widths.is_empty() || self.widths.contains(&0) || self.stem_width == 0 {
            return fail(format!(
                "widths must be non-empty and positive, got stem {} and stages {:?}",
                self.stem_width, self.widths
            ));
        }
        if self.num_classes == 0 {
            return fail("num_classes must be at least 1".into());
        }
        if self.stem_stride == 0 {
            return fail("stem_stride must be at least 1".into());
        }
        if self.shortcut == Shortcut::OptionA {
            let mut in_c = self.stem_width;
            for &w in &self.widths {
                if w < in_c {
                    return fail(format!(
                        "option-A shortcuts can only add channels, but a stage goes from {in_c} to {w}"
                    ));
                }
                in_c = w;
            }
        }
        Ok(())
    }
}

/// The parameter-free or projection path added to a block's output.
#[derive(Debug, Clone)]
enum ShortcutPath {
    Identity,
    /// `x[:, :, ::stride, ::stride]`, then `pad_before` / `pad_after` zero channels.
    ZeroPad {
        stride: usize,
        pad_before: usize,
        pad_after: usize,
    },
    Projection {
        conv: Conv2d,
        bn: BatchNorm2d,
    },
}

/// Option-A shortcut: subsample by `stride` in both spatial dims (keeping index 0, as Python's
/// `::stride`) and zero-pad channels.
pub fn option_a_shortcut(x: &Tensor, stride: usize, pad_before: usize, pad_after: usize) -> Result<Tensor> {
    let x = if stride > 1 {
        let (_, _, h, w) = x.dims4()?;
        let rows = strided_index(h, stride, x.device())?;
        let cols = strided_index(w, stride, x.device())?;
        x.index_select(&rows, 2)?.index_select(&cols, 3)?
    } else {
        x.clone()
    };
    if pad_before == 0 && pad_after == 0 {
        Ok(x)
    } else {
        x.pad_with_zeros(1, pad_before, pad_after)
    }
}

fn strided_index(len: usize, stride: usize, device: &candle_core::Device) -> Result<Tensor> {
    let idx: Vec<u32> = (0..len).step_by(stride).map(|i| i as u32).collect();
    let n = idx.len();
    Tensor::from_vec(idx, n, device)
}

/// A CIFAR ResNet BasicBlock (two 3×3 convs with batch norm, shortcut per [`Shortcut`]).
#[derive(Debug, Clone)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: ShortcutPath,
}

impl BasicBlock {
    pub fn new(in_c: usize, out_c: usize, stride: usize, cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Self::build(in_c, out_c, stride, cfg.shortcut, cfg.style.conv_init(), vb)
    }

    /// A block with the given shortcut kind and convolution initialisation (ResNet-18 and
    /// other BasicBlock networks share this block).
    pub fn build(
        in_c: usize,
        out_c: usize,
        stride: usize,
        shortcut: Shortcut,
        init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv1 = Conv2d::new(in_c, out_c, 3, stride, 1, init, vb.pp("conv1"))?;
        let bn1 = BatchNorm2d::new(out_c, vb.pp("bn1"))?;
        let conv2 = Conv2d::new(out_c, out_c, 3, 1, 1, init, vb.pp("conv2"))?;
        let bn2 = BatchNorm2d::new(out_c, vb.pp("bn2"))?;
        let shortcut = if stride == 1 && in_c == out_c {
            ShortcutPath::Identity
        } else {
            match shortcut {
                Shortcut::OptionA => {
                    // akamaster pads planes/4 on each side when doubling; in general split the
                    // difference, the extra channel (odd difference) after.
                    let extra = out_c - in_c;
                    ShortcutPath::ZeroPad { stride, pad_before: extra / 2, pad_after: extra - extra / 2 }
                }
                Shortcut::OptionB => {
                    let vb = vb.pp("downsample");
                    ShortcutPath::Projection {
                        conv: Conv2d::new(in_c, out_c, 1, stride, 0, init, vb.pp("0"))?,
                        bn: BatchNorm2d::new(out_c, vb.pp("1"))?,
                    }
                }
            }
        };
        Ok(Self { conv1, bn1, conv2, bn2, shortcut })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let out = layers::conv_bn(&self.conv1, &self.bn1, x, mode, true)?;
        let residual = match &self.shortcut {
            ShortcutPath::Identity => x.clone(),
            ShortcutPath::ZeroPad { stride, pad_before, pad_after } => {
                option_a_shortcut(x, *stride, *pad_before, *pad_after)?
            }
            ShortcutPath::Projection { conv, bn } => layers::conv_bn(conv, bn, x, mode, false)?,
        };
        layers::conv_bn_add_relu(&self.conv2, &self.bn2, &out, &residual, mode)
    }

    pub fn num_params(&self) -> usize {
        let shortcut = match &self.shortcut {
            ShortcutPath::Projection { conv, bn } => conv.num_params() + bn.num_params(),
            _ => 0,
        };
        self.conv1.num_params()
            + self.bn1.num_params()
            + self.conv2.num_params()
            + self.bn2.num_params()
            + shortcut
    }
}

/// The stem `conv1` (3×3, `stem_width` channels, `stem_stride`, a bias if `stem_bias`) and its
/// batch norm `bn1`.
pub fn stem(cfg: &Config, vb: VarBuilder) -> Result<(Conv2d, BatchNorm2d)> {
    let (init, c, stride) = (cfg.style.conv_init(), cfg.stem_width, cfg.stem_stride);
    let conv1 = if cfg.stem_bias {
        Conv2d::with_bias(3, c, 3, stride, 1, init, vb.pp("conv1"))?
    } else {
        Conv2d::new(3, c, 3, stride, 1, init, vb.pp("conv1"))?
    };
    Ok((conv1, BatchNorm2d::new(c, vb.pp("bn1"))?))
}

/// Stage `s` (`layer{s+1}`) of a CIFAR ResNet taking `in_c` channels: its BasicBlocks, the
/// first with stride 2 after the first stage.
pub fn stage(cfg: &Config, s: usize, in_c: usize, vb: VarBuilder) -> Result<Vec<BasicBlock>> {
    let width = cfg.widths[s];
    let vb = vb.pp(format!("layer{}", s + 1));
    let mut blocks = Vec::with_capacity(cfg.blocks_per_stage());
    let mut c = in_c;
    for b in 0..cfg.blocks_per_stage() {
        let stride = if s > 0 && b == 0 { 2 } else { 1 };
        blocks.push(BasicBlock::new(c, width, stride, cfg, vb.pp(b))?);
        c = width;
    }
    Ok(blocks)
}

/// The forward pass of a BasicBlock ResNet: stem conv + BN + ReLU, the stages (each stage's
/// output is a stage feature), global average pool, linear head. `arch` names the model in the
/// error for a non-RGB input.
pub fn forward_resnet(
    arch: &str,
    (conv1, bn1): (&Conv2d, &BatchNorm2d),
    stages: &[Vec<BasicBlock>],
    head: &Linear,
    input: &Tensor,
    mode: Mode,
) -> Result<ModelOutput> {
    let (_, c, _, _) = input.dims4()?;
    if c != 3 {
        candle_core::bail!("{arch} expects (batch, 3, H, W) images, got shape {:?}", input.dims());
    }
    let mut x = layers::conv_bn(conv1, bn1, input, mode, true)?;
    let mut stage_features = Vec::with_capacity(stages.len());
    for stage in stages {
        for block in stage {
            x = block.forward(&x, mode)?;
        }
        stage_features.push(x.clone());
    }
    let embedding = layers::global_avg_pool(&x)?;
    let logits = layers::apply_linear(head, &embedding)?;
    Ok(ModelOutput { logits, stage_features, embedding })
}

/// A CIFAR ResNet; see the module docs.
#[derive(Debug, Clone)]
pub struct CifarResNet {
    config: Config,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    /// `layer1`, `layer2`, ...
    stages: Vec<Vec<BasicBlock>>,
    head: Linear,
    num_params: usize,
}

impl CifarResNet {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let (conv1, bn1) = stem(config, vb.clone())?;
        let mut in_c = config.stem_width;
        let mut stages = Vec::with_capacity(config.widths.len());
        for s in 0..config.widths.len() {
            stages.push(stage(config, s, in_c, vb.clone())?);
            in_c = config.widths[s];
        }
        let head = config.style.head(in_c, config.num_classes, vb.clone())?;
        let num_params = conv1.num_params()
            + bn1.num_params()
            + stages.iter().flatten().map(BasicBlock::num_params).sum::<usize>()
            + layers::linear_num_params(&head);
        Ok(Self { config: config.clone(), conv1, bn1, stages, head, num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Width of the pooled embedding the head sees.
    pub fn embedding_dim(&self) -> usize {
        self.config.widths.last().copied().unwrap_or(self.config.stem_width)
    }

    pub fn head(&self) -> &Linear {
        &self.head
    }
}

impl Classifier for CifarResNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        forward_resnet(&self.config.arch, (&self.conv1, &self.bn1), &self.stages, &self.head, input, mode)
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
