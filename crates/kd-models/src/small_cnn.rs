//! Small CNNs for paired-digit experiments (AV-MNIST style, kd-cross-modal):
//!
//! - [`LeNet`]: a LeNet-style image CNN for `1×28×28` digits: two `5×5` conv blocks
//!   (conv → batch norm → ReLU → `2×2` max pool), a hidden fully connected layer (the
//!   embedding) and the classifier. Batch norm replaces LeNet-5's tanh scaling so it trains in a
//!   few epochs; variable names follow PyTorch (`conv1.weight`, `bn1.running_mean`, `fc1.bias`).
//! - [`AudioCnn`]: a small CNN over a `1×n_mels×frames` log-mel spectrogram: `3×3` conv blocks
//!   (conv → batch norm → ReLU, `2×2` max pool after every block but the last), an average over
//!   the time axis only (frequency is kept: the embedding is `channels × n_mels/2^pools`, since a
//!   spoken digit is told apart by where its energy lies in frequency) and the classifier.
//!
//! Both implement [`kd_core::Classifier`] and are built from a [`VarBuilder`] (a seeded `VarMap`
//! to train, read-only tensors for a frozen teacher).

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use kd_core::{Classifier, Mode, ModelOutput};

use crate::layers::{self, linear_num_params, torch_default_linear, BatchNorm2d, Conv2d};

/// Architecture name of [`LeNet`] in recipes and the CSV.
pub const LENET_ARCH: &str = "lenet";
/// Architecture name of [`AudioCnn`].
pub const AUDIO_CNN_ARCH: &str = "audio-cnn";

/// [`LeNet`]'s shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeNetConfig {
    pub in_channels: usize,
    /// Side of the square input (28 for MNIST); must be divisible by 4.
    pub input_size: usize,
    /// Channels of the two conv blocks.
    pub channels: [usize; 2],
    /// Width of the hidden layer (the embedding).
    pub hidden: usize,
    pub num_classes: usize,
}

impl LeNetConfig {
    /// MNIST digits: `1×28×28`, 16 and 32 channels, 128 hidden units.
    pub fn mnist(num_classes: usize) -> Self {
        Self { in_channels: 1, input_size: 28, channels: [16, 32], hidden: 128, num_classes }
    }
}

/// One conv block: bias-free conv, batch norm with fused ReLU, optional `2×2` max pool.
#[derive(Debug, Clone)]
struct ConvBlock {
    conv: Conv2d,
    bn: BatchNorm2d,
    pool: bool,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, k: usize, pool: bool, conv: VarBuilder, bn: VarBuilder) -> Result<Self> {
        let conv = Conv2d::new(cin, cout, k, 1, k / 2, candle_nn::init::DEFAULT_KAIMING_NORMAL, conv)?;
        Ok(Self { conv, bn: BatchNorm2d::new(cout, bn)?, pool })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = layers::conv_bn(&self.conv, &self.bn, x, mode, true)?;
        if self.pool {
            y.max_pool2d(2)
        } else {
            Ok(y)
        }
    }

    fn num_params(&self) -> usize {
        self.conv.num_params() + self.bn.num_params()
    }
}

/// LeNet-style image CNN (see the module docs).
#[derive(Debug, Clone)]
pub struct LeNet {
    blocks: [ConvBlock; 2],
    fc1: Linear,
    fc: Linear,
    config: LeNetConfig,
}

impl LeNet {
    pub fn new(config: &LeNetConfig, vb: VarBuilder) -> Result<Self> {
        if !config.input_size.is_multiple_of(4) || config.input_size == 0 {
            candle_core::bail!(
                "lenet: input_size must be a positive multiple of 4, got {}",
                config.input_size
            );
        }
        let [c1, c2] = config.channels;
        let blocks = [
            ConvBlock::new(config.in_channels, c1, 5, true, vb.pp("conv1"), vb.pp("bn1"))?,
            ConvBlock::new(c1, c2, 5, true, vb.pp("conv2"), vb.pp("bn2"))?,
        ];
        let side = config.input_size / 4;
        let fc1 = torch_default_linear(c2 * side * side, config.hidden, vb.pp("fc1"))?;
        let fc = torch_default_linear(config.hidden, config.num_classes, vb.pp("fc"))?;
        Ok(Self { blocks, fc1, fc, config: config.clone() })
    }

    pub fn config(&self) -> &LeNetConfig {
        &self.config
    }

    /// Width of the embedding ([`ModelOutput::embedding`]).
    pub fn embedding_dim(&self) -> usize {
        self.config.hidden
    }
}

impl Classifier for LeNet {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        let mut x = input.clone();
        let mut stage_features = Vec::with_capacity(2);
        for b in &self.blocks {
            x = b.forward(&x, mode)?;
            stage_features.push(x.clone());
        }
        let embedding = self.fc1.forward_relu(&x.flatten_from(1)?)?;
        let logits = candle_core::Module::forward(&self.fc, &embedding)?;
        Ok(ModelOutput { logits, stage_features, embedding })
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn arch(&self) -> &str {
        LENET_ARCH
    }

    fn num_params(&self) -> usize {
        self.blocks.iter().map(ConvBlock::num_params).sum::<usize>()
            + linear_num_params(&self.fc1)
            + linear_num_params(&self.fc)
    }
}

trait ForwardRelu {
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor>;
}

impl ForwardRelu for Linear {
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        candle_core::Module::forward(self, x)?.relu()
    }
}

/// [`AudioCnn`]'s shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioCnnConfig {
    pub n_mels: usize,
    pub frames: usize,
    /// Channels of the `3×3` conv blocks; every block but the last is followed by a `2×2` max
    /// pool. The last width is the embedding's.
    pub channels: Vec<usize>,
    pub num_classes: usize,
}

impl AudioCnnConfig {
    /// Three blocks of 16, 32 and 64 channels.
    pub fn small(n_mels: usize, frames: usize, num_classes: usize) -> Self {
        Self { n_mels, frames, channels: vec![16, 32, 64], num_classes }
    }
}

/// Small spectrogram CNN (see the module docs).
#[derive(Debug, Clone)]
pub struct AudioCnn {
    blocks: Vec<ConvBlock>,
    fc: Linear,
    config: AudioCnnConfig,
}

impl AudioCnn {
    pub fn new(config: &AudioCnnConfig, vb: VarBuilder) -> Result<Self> {
        let pools = config.channels.len().saturating_sub(1);
        let min_side = 1usize << pools;
        if config.channels.is_empty() || config.n_mels < min_side || config.frames < min_side {
            candle_core::bail!(
                "audio-cnn: need at least one block and a spectrogram of at least {min_side}×{min_side} for {} \
                 blocks, got {}×{}",
                config.channels.len(),
                config.n_mels,
                config.frames
            );
        }
        let mut blocks = Vec::with_capacity(config.channels.len());
        let mut cin = 1;
        for (i, &c) in config.channels.iter().enumerate() {
            let pool = i + 1 < config.channels.len();
            let k = i + 1;
            blocks.push(ConvBlock::new(cin, c, 3, pool, vb.pp(format!("conv{k}")), vb.pp(format!("bn{k}")))?);
            cin = c;
        }
        let fc = torch_default_linear(cin * (config.n_mels >> pools), config.num_classes, vb.pp("fc"))?;
        Ok(Self { blocks, fc, config: config.clone() })
    }

    pub fn config(&self) -> &AudioCnnConfig {
        &self.config
    }

    /// `last channels × n_mels / 2^pools`.
    pub fn embedding_dim(&self) -> usize {
        let pools = self.config.channels.len() - 1;
        self.config.channels.last().expect("checked non-empty") * (self.config.n_mels >> pools)
    }
}

impl Classifier for AudioCnn {
    fn forward(&self, input: &Tensor, mode: Mode) -> Result<ModelOutput> {
        let mut x = input.clone();
        let mut stage_features = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            x = b.forward(&x, mode)?;
            stage_features.push(x.clone());
        }
        // Mean over time (the last axis), then channels × frequency.
        let embedding = x.mean(3)?.flatten_from(1)?;
        let logits = candle_core::Module::forward(&self.fc, &embedding)?;
        Ok(ModelOutput { logits, stage_features, embedding })
    }

    fn num_classes(&self) -> usize {
        self.config.num_classes
    }

    fn arch(&self) -> &str {
        AUDIO_CNN_ARCH
    }

    fn num_params(&self) -> usize {
        self.blocks.iter().map(ConvBlock::num_params).sum::<usize>() + linear_num_params(&self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn lenet_shapes_and_parameter_count() {
        let vm = VarMap::new();
        let vb = crate::init::seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
        let net = LeNet::new(&LeNetConfig::mnist(10), vb).unwrap();
        let x = Tensor::randn(0f32, 1., (3, 1, 28, 28), &Device::Cpu).unwrap();
        let out = net.forward(&x, Mode::Train).unwrap();
        assert_eq!(out.logits.dims(), &[3, 10]);
        assert_eq!(out.embedding.dims(), &[3, 128]);
        assert_eq!(out.stage_features[0].dims(), &[3, 16, 14, 14]);
        assert_eq!(out.stage_features[1].dims(), &[3, 32, 7, 7]);
        // By hand: conv1 16·1·25 + bn1 32, conv2 32·16·25 + bn2 64, fc1 1568·128 + 128,
        // fc 128·10 + 10.
        let want = 400 + 32 + 12800 + 64 + 1568 * 128 + 128 + 1280 + 10;
        assert_eq!(net.num_params(), want);
        assert!(vm.data().lock().unwrap().contains_key("bn1.running_mean"));
    }

    #[test]
    fn audio_cnn_shapes_and_refuses_too_small_inputs() {
        let vm = VarMap::new();
        let vb = crate::init::seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
        let net = AudioCnn::new(&AudioCnnConfig::small(32, 48, 10), vb).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 1, 32, 48), &Device::Cpu).unwrap();
        let out = net.forward(&x, Mode::Eval).unwrap();
        assert_eq!(out.logits.dims(), &[2, 10]);
        assert_eq!(out.embedding.dims(), &[2, 64 * 8]);
        assert_eq!(out.stage_features[2].dims(), &[2, 64, 8, 12]);
        assert_eq!(net.embedding_dim(), 512);
        let vm = VarMap::new();
        let vb = crate::init::seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
        assert!(AudioCnn::new(&AudioCnnConfig::small(3, 48, 10), vb).is_err());
    }

    #[test]
    fn same_seed_same_weights() {
        let build = |seed| {
            let vm = VarMap::new();
            let vb = crate::init::seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
            let net = AudioCnn::new(&AudioCnnConfig::small(16, 16, 10), vb).unwrap();
            let x = Tensor::ones((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
            net.forward(&x, Mode::Eval).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(build(3), build(3));
        assert_ne!(build(3), build(4));
    }
}
