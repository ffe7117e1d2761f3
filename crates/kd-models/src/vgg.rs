//! CIFAR VGG with batch norm (Simonyan & Zisserman, ICLR 2015) as the KD literature uses it:
//! RepDistiller's `models/vgg.py`, whose `model_dict` maps `vgg8/11/13/16/19` to the `_bn`
//! variants (CRD and DKD tables: `vgg13` → `vgg8`, and `vgg13` → MobileNetV2).
//!
//! Five conv blocks (`block0..4`, `nn.Sequential` of `Conv2d(3×3, padding 1, bias)` →
//! `BatchNorm2d` → ReLU, the last ReLU of each block dropped and applied in the forward pass),
//! 2×2 max pools after blocks 0–2 (and after block 3 only for 64-pixel inputs, as the reference
//! checks the input height), global average pool, `classifier` (`Linear(512, classes)`).
//! Tensor names follow the `Sequential` indices: conv `j` of a block is `block<b>.<3j>`, its BN
//! `block<b>.<3j+1>`.
//!
//! Stage features are the maps RepDistiller returns with `is_feat=True` (and `preact=False`)
//! before the embedding: the ReLU'd output of each of the five blocks, before its pool.
//!
//! Initialisation as the reference: conv weights normal with std `sqrt(2 / (k² · out))`, conv
//! bias 0, BN weight 1 and bias 0, classifier weight normal with std 0.01 and bias 0.

use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};
use serde::{Deserialize, Serialize};

use crate::channel_bias::add_channel_bias;
use crate::cifar_common::{check_rgb, fan_out_normal, linear_zero_bias};
use crate::error::ModelError;
use crate::layers::{self, BatchNorm2d, Conv2d};

/// The architectures [`Config::from_arch_name`] knows (RepDistiller's `model_dict` names, all
/// with batch norm).
pub const ARCH_NAMES: [&str; 5] = ["vgg8", "vgg11", "vgg13", "vgg16", "vgg19"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub arch: String,
    /// Output channels of each conv, per block (five blocks).
    pub blocks: Vec<Vec<usize>>,
    pub num_classes: usize,
}

impl Config {
    /// The configuration for a recipe name (RepDistiller's `cfg` 'S', 'A', 'B', 'D', 'E').
    pub fn from_arch_name(name: &str, num_classes: usize) -> std::result::Result<Self, ModelError> {
        let blocks: Vec<Vec<usize>> = match name {
            "vgg8" => vec![vec![64], vec![128], vec![256], vec![512], vec![512]],
            "vgg11" => vec![vec![64], vec![128], vec![256, 256], vec![512, 512], vec![512, 512]],
            "vgg13" => vec![vec![64, 64], vec![128, 128], vec![256, 256], vec![512, 512], vec![512, 512]],
            "vgg16" => {
                vec![
                    vec![64, 64],
                    vec![128, 128],
                    vec![256, 256, 256],
                    vec![512, 512, 512],
                    vec![512, 512, 512],
                ]
            }
            "vgg19" => vec![
                vec![64, 64],
                vec![128, 128],
                vec![256, 256, 256, 256],
                vec![512, 512, 512, 512],
                vec![512, 512, 512, 512],
            ],
            _ => {
                return Err(ModelError::UnknownArch {
                    name: name.to_string(),
                    known: ARCH_NAMES.iter().map(|s| s.to_string()).collect(),
                })
            }
        };
        Ok(Self { arch: name.to_string(), blocks, num_classes })
    }

    pub fn validate(&self) -> std::result::Result<(), ModelError> {
        let fail = |message: String| Err(ModelError::Config { arch: self.arch.clone(), message });
        if self.blocks.len() != 5 || self.blocks.iter().any(|b| b.is_empty() || b.contains(&0)) {
            return fail(format!("expected five non-empty blocks of positive widths, got {:?}", self.blocks));
        }
        if self.num_classes == 0 {
            return fail("num_classes must be at least 1".into());
        }
        Ok(())
    }
}

/// `Conv2d(3×3, padding 1)` with bias, then batch norm and ReLU.
#[derive(Debug, Clone)]
struct ConvBnRelu {
    conv: Conv2d,
    bias: Tensor,
    bn: BatchNorm2d,
}

impl ConvBnRelu {
    fn new(in_c: usize, out_c: usize, vb_conv: VarBuilder, vb_bn: VarBuilder) -> Result<Self> {
        let conv = Conv2d::new(in_c, out_c, 3, 1, 1, fan_out_normal(), vb_conv.clone())?;
        let bias = vb_conv.get_with_hints(out_c, "bias", Init::Const(0.0))?;
        Ok(Self { conv, bias, bn: BatchNorm2d::new(out_c, vb_bn)? })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Train => {
                let y = add_channel_bias(self.conv.kernels(), &self.conv.forward(x)?, &self.bias)?;
                self.bn.forward_relu(&y, mode)
            }
            Mode::Eval => {
                // bn(conv(x) + b) is bn with running mean `mean − b` applied to conv(x), so the
                // folded conv + BN kernel serves the biased conv too.
                let shifted_mean = (self.bn.running_mean() - &self.bias)?;
                let params = kd_kernels::BnEval { running_mean: &shifted_mean, ..self.bn.eval_params() };
                self.conv.kernels().conv2d_bn_eval(x, self.conv.weight(), 1, 1, &params, None, true)
            }
        }
    }

    fn num_params(&self) -> usize {
        self.conv.num_params() + self.bias.elem_count() + self.bn.num_params()
    }
}

/// A CIFAR VGG with batch norm; see the module docs.
#[derive(Debug, Clone)]
pub struct Vgg {
    config: Config,
    blocks: Vec<Vec<ConvBnRelu>>,
    classifier: Linear,
    num_params: usize,
}

impl Vgg {
    pub fn new(config: &Config, vb: VarBuilder) -> std::result::Result<Self, ModelError> {
        config.validate()?;
        let mut in_c = 3;
        let mut blocks = Vec::with_capacity(5);
        for (b, widths) in config.blocks.iter().enumerate() {
            let vb_block = vb.pp(format!("block{b}"));
            let mut convs = Vec::with_capacity(widths.len());
            for (j, &out_c) in widths.iter().enumerate() {
                convs.push(ConvBnRelu::new(in_c, out_c, vb_block.pp(3 * j), vb_block.pp(3 * j + 1))?);
                in_c = out_c;
            }
            blocks.push(convs);
        }
        let head_init = Init::Randn { mean: 0.0, stdev: 0.01 };
        let classifier = linear_zero_bias(in_c, config.num_classes, head_init, vb.pp("classifier"))?;
        let num_params = blocks.iter().flatten().map(ConvBnRelu::num_params).sum::<usize>()
            + layers::linear_num_params(&classifier);
        Ok(Self { config: config.clone(), blocks, classifier, num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Classifier for Vgg {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        check_rgb(&self.config.arch, input)?;
        let height = input.dim(2)?;
        let mut x = input.clone();
        let mut stage_features = Vec::with_capacity(5);
        for (b, block) in self.blocks.iter().enumerate() {
            for conv in block {
                x = conv.forward(&x, mode)?;
            }
            stage_features.push(x.clone());
            // pool0..2 always; pool3 only for 64-pixel inputs (RepDistiller's `if h == 64`).
            if b < 3 || (b == 3 && height == 64) {
                x = x.max_pool2d(2)?;
            }
        }
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
