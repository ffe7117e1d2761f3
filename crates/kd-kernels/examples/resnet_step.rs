//! Times a CIFAR ResNet (option-A shortcuts, batch norm) with the kd-kernels ops against the same
//! network built from candle's stock ops, in examples per second.
//!
//! ```text
//! cargo run --release -p kd-kernels --example resnet_step -- [train|eval] [depth] [batch] [steps] [fast|stock|both]
//! ```
//! `train` = forward, cross-entropy, backward, SGD update; `eval` = forward with running statistics.

use std::time::Instant;

// The allocator matters: glibc maps and unmaps every large temporary (see PERF-NOTES).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{DType, Device, Result, Tensor, Var};

#[derive(Clone, Copy, PartialEq)]
enum Kernels {
    Fast,
    Stock,
}

struct Bn {
    gamma: Var,
    beta: Var,
    mean: Tensor,
    var: Tensor,
}

impl Bn {
    fn new(c: usize, dev: &Device) -> Result<Self> {
        Ok(Self {
            gamma: Var::ones(c, DType::F32, dev)?,
            beta: Var::zeros(c, DType::F32, dev)?,
            mean: Tensor::zeros(c, DType::F32, dev)?,
            var: Tensor::ones(c, DType::F32, dev)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, relu: bool, k: Kernels) -> Result<Tensor> {
        let eps = 1e-5;
        match (k, train) {
            (Kernels::Fast, true) if relu => {
                Ok(kd_kernels::batch_norm_relu_train(x, &self.gamma, &self.beta, eps)?.0)
            }
            (Kernels::Fast, true) => Ok(kd_kernels::batch_norm_train(x, &self.gamma, &self.beta, eps)?.0),
            (Kernels::Fast, false) if relu => {
                kd_kernels::batch_norm_relu_eval(x, &self.gamma, &self.beta, &self.mean, &self.var, eps)
            }
            (Kernels::Fast, false) => {
                kd_kernels::batch_norm_eval(x, &self.gamma, &self.beta, &self.mean, &self.var, eps)
            }
            (Kernels::Stock, true) => {
                let y = kd_kernels::reference::batch_norm_train(x, &self.gamma, &self.beta, eps)?.0;
                if relu {
                    y.relu()
                } else {
                    Ok(y)
                }
            }
            (Kernels::Stock, false) => {
                let y = kd_kernels::reference::batch_norm_eval(
                    x,
                    &self.gamma,
                    &self.beta,
                    &self.mean,
                    &self.var,
                    eps,
                )?;
                if relu {
                    y.relu()
                } else {
                    Ok(y)
                }
            }
        }
    }
}

struct Conv {
    w: Var,
    stride: usize,
    pad: usize,
}

impl Conv {
    fn new(i: usize, o: usize, k: usize, stride: usize, dev: &Device) -> Result<Self> {
        let std = (2.0 / (i * k * k) as f64).sqrt();
        Ok(Self {
            w: Var::from_tensor(&Tensor::randn(0f32, std as f32, (o, i, k, k), dev)?)?,
            stride,
            pad: k / 2,
        })
    }

    fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        match k {
            Kernels::Fast => kd_kernels::conv2d(x, &self.w, self.stride, self.pad),
            Kernels::Stock => kd_kernels::reference::conv2d(x, &self.w, self.stride, self.pad),
        }
    }
}

struct Block {
    conv1: Conv,
    bn1: Bn,
    conv2: Conv,
    bn2: Bn,
    downsample: Option<usize>, // extra channels to zero-pad on each side
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool, k: Kernels) -> Result<Tensor> {
        let h = self.bn1.forward(&self.conv1.forward(x, k)?, train, true, k)?;
        let h = self.bn2.forward(&self.conv2.forward(&h, k)?, train, false, k)?;
        let shortcut = match self.downsample {
            None => x.clone(),
            Some(pad) => {
                let (n, c, hh, ww) = x.dims4()?;
                let sub = x
                    .reshape((n, c, hh / 2, 2, ww / 2, 2))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((n, c, hh / 2, ww / 2))?;
                sub.pad_with_zeros(1, pad, pad)?
            }
        };
        match k {
            Kernels::Fast => kd_kernels::add_relu(&h, &shortcut),
            Kernels::Stock => (h + shortcut)?.relu(),
        }
    }
}

struct ResNet {
    stem: Conv,
    stem_bn: Bn,
    blocks: Vec<Block>,
    fc_w: Var,
    fc_b: Var,
}

impl ResNet {
    fn new(depth: usize, dev: &Device) -> Result<Self> {
        let per_stage = (depth - 2) / 6;
        let mut blocks = Vec::new();
        let mut in_c = 16;
        for (stage, out_c) in [16usize, 32, 64].into_iter().enumerate() {
            for b in 0..per_stage {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block {
                    conv1: Conv::new(in_c, out_c, 3, stride, dev)?,
                    bn1: Bn::new(out_c, dev)?,
                    conv2: Conv::new(out_c, out_c, 3, 1, dev)?,
                    bn2: Bn::new(out_c, dev)?,
                    downsample: (stride == 2).then_some((out_c - in_c) / 2),
                });
                in_c = out_c;
            }
        }
        Ok(Self {
            stem: Conv::new(3, 16, 3, 1, dev)?,
            stem_bn: Bn::new(16, dev)?,
            blocks,
            fc_w: Var::from_tensor(&Tensor::randn(0f32, 0.1, (10, 64), dev)?)?,
            fc_b: Var::zeros(10, DType::F32, dev)?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, k: Kernels) -> Result<Tensor> {
        let mut h = self.stem_bn.forward(&self.stem.forward(x, k)?, train, true, k)?;
        for b in &self.blocks {
            h = b.forward(&h, train, k)?;
        }
        let pooled = h.mean((2, 3))?;
        pooled.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)
    }

    fn vars(&self) -> Vec<&Var> {
        let mut v = vec![&self.stem.w, &self.stem_bn.gamma, &self.stem_bn.beta];
        for b in &self.blocks {
            v.extend([&b.conv1.w, &b.bn1.gamma, &b.bn1.beta, &b.conv2.w, &b.bn2.gamma, &b.bn2.beta]);
        }
        v.extend([&self.fc_w, &self.fc_b]);
        v
    }
}

fn train_step(net: &ResNet, x: &Tensor, labels: &Tensor, k: Kernels) -> Result<f32> {
    let logits = net.forward(x, true, k)?;
    let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
    let grads = loss.backward()?;
    for v in net.vars() {
        if let Some(g) = grads.get(v) {
            v.set(&(v.as_tensor() - (g * 0.01)?)?)?;
        }
    }
    loss.to_scalar::<f32>()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("train");
    let depth: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let batch: usize =
        args.get(2).and_then(|s| s.parse().ok()).unwrap_or(if mode == "train" { 128 } else { 256 });
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let which = args.get(4).map(String::as_str).unwrap_or("fast");
    let dev = Device::Cpu;
    let net = ResNet::new(depth, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 32, 32), &dev)?;
    let labels = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), batch, &dev)?;
    let kinds: Vec<(Kernels, &str)> = match which {
        "stock" => vec![(Kernels::Stock, "stock")],
        "both" => vec![(Kernels::Fast, "kd-kernels"), (Kernels::Stock, "stock")],
        _ => vec![(Kernels::Fast, "kd-kernels")],
    };
    println!("ResNet-{depth} {mode} batch {batch}, {} rayon threads", rayon::current_num_threads());
    for (k, name) in kinds {
        let run = |k| -> Result<()> {
            if mode == "train" {
                train_step(&net, &x, &labels, k)?;
            } else {
                net.forward(&x, false, k)?.sum_all()?.to_scalar::<f32>()?;
            }
            Ok(())
        };
        run(k)?; // warm-up: buffers, page faults
        let mut times = Vec::new();
        for _ in 0..steps {
            let t = Instant::now();
            run(k)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        println!(
            "{name:>10}: median {:.1} ms/step, {:.1} ex/s (best {:.1} ex/s)",
            median * 1e3,
            batch as f64 / median,
            batch as f64 / times[0]
        );
    }
    Ok(())
}
