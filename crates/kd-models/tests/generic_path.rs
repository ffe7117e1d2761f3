//! The generic candle path (what runs on a GPU) against the fast CPU kernels on one training
//! step: the same network built twice from one seed, once with `Kernels::Fast` and once with
//! `Kernels::Generic`, both on the CPU; one batch of 16 random 3×32×32 images: train-mode
//! logits, the cross-entropy loss, the gradient of every trainable variable, every variable
//! after one SGD step (lr 0.1, momentum 0.9, weight decay 5e-4, built as kd-cli builds it) and
//! the batch-norm running statistics, then eval-mode logits with the updated weights.
//!
//! A difference is `max |fast - generic| / max |generic|` over one tensor, the worst over the
//! tensors of a quantity reported (`--nocapture` prints them); running means are relative to
//! their layer's largest running standard deviation if that is larger (a mean of zero-mean
//! data is all rounding). Worst measured over input seeds 11-34 (release, x86-64), on the inputs
//! without a ReLU flip for the gradients and what follows from them:
//!
//! | quantity                  | resnet20 | resnet20b | wrn_16_1 | tolerance |
//! |---------------------------|----------|-----------|----------|-----------|
//! | train logits              | 4.3e-7   | 7.3e-7    | 6.3e-7   | 3e-6      |
//! | loss                      | 1.2e-7   | 2.7e-7    | 2.1e-7   | 1e-6      |
//! | running statistics        | 1.7e-7   | 2.1e-7    | 1.2e-7   | 1e-6      |
//! | gradients (worst tensor)  | 1.0e-4   | 3.1e-5    | 2.4e-5   | 3e-4      |
//! | gradients (all, L2)       | 4.4e-6   | 1.8e-6    | 2.2e-6   | 2e-5      |
//! | updated variables         | 1.0e-4   | 3.1e-5    | 2.4e-5   | 3e-4      |
//! | eval logits (after step)  | 5.3e-6   | 9.4e-7    | 4.2e-7   | 2e-5      |
//! | gradients (L2), flipped   | 3.0e-3   | 1.1e-2    | 5.7e-3   | 5e-2      |
//! | inputs without a flip     | 11 of 24 | 9 of 24   | 15 of 24 |           |
//!
//! The worst gradients are of tensors whose gradient is small (`layer3.2.bn1.bias`); an f64
//! run of the generic path put the fast path within 3e-6 of it there and the f32 generic path
//! within 2e-5 (resnet20b, one input): the difference is mostly the generic path's f32
//! batch-norm statistics.
//!
//! ReLU flips. The forward values of the two paths agree to ~5e-7, but a ReLU's gradient jumps
//! where its input crosses zero: of the ~3 million ReLU units in a ResNet-20 step, on about
//! half of the inputs one to three sit within ~1e-6 of zero and are kept by one path and zeroed
//! by the other, and then the gradients below them differ by up to several percent (resnet20
//! and wrn_16_2 at input seed 11: two flips each, 2.8e-2 and 3.7e-2 on the worst tensor; an f64
//! run of the generic path sided with the fast path on each of those flips). That is rounding,
//! not a wrong gradient, so the test records which units each path zeroed
//! (`kd_models::layers::relu_probe`) and compares gradients tightly on the first input seed
//! where none flipped; on an input with flips it checks the forward values tightly and the
//! gradients only to a bound flips explain.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use kd_core::optim::{Optimizer, Sgd};
use kd_core::Mode;
use kd_models::layers::relu_probe;
use kd_models::{
    build_with_kernels, new_model, new_model_with_kernels, trainable_vars, BuildOptions, Conv2d, Kernels,
};

/// The device both models are built on; the comparison is about kernels, not devices.
fn device() -> Device {
    Device::Cpu
}

const BATCH: usize = 16;
const CLASSES: usize = 10;
/// The model's initialisation seed (both paths).
const MODEL_SEED: u64 = 7;
/// Input batches tried in order until one has no ReLU flip (see the module docs). At the rates
/// measured (9 to 15 of these 24 have none), a kernel change that reshuffles the last bits has a
/// ~1e-5 chance of leaving no clean input.
const INPUT_SEEDS: [u64; 24] =
    [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34];

/// Tolerances on the differences, 3-5× the worst measured over input seeds 11-34 (module docs).
const TOL_LOGITS: f32 = 3e-6;
const TOL_LOSS: f32 = 1e-6;
const TOL_RUNNING_STATS: f32 = 1e-6;
/// Without flips.
const TOL_GRADS: f32 = 3e-4;
const TOL_GRADS_L2: f64 = 2e-5;
const TOL_UPDATED: f32 = 3e-4;
const TOL_EVAL_LOGITS: f32 = 2e-5;
/// With flips: `‖fast - generic‖ / ‖generic‖` over all gradients together.
const TOL_GRADS_L2_WITH_FLIPS: f64 = 5e-2;

/// Deterministic values in `[-1, 1)` (SplitMix64), independent of any RNG crate.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn variables(varmap: &VarMap) -> BTreeMap<String, Vec<f32>> {
    varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), to_vec(v.as_tensor()))).collect()
}

/// What one training step produced, every tensor flattened.
struct Step {
    initial: BTreeMap<String, Vec<f32>>,
    train_logits: Vec<f32>,
    loss: f32,
    grads: BTreeMap<String, Vec<f32>>,
    /// Every variable after the step: trainable ones from SGD, running statistics from the
    /// train-mode forward.
    after: BTreeMap<String, Vec<f32>>,
    eval_logits: Vec<f32>,
    /// Per training-mode ReLU, which outputs were 0.
    relu_zeros: Vec<Vec<bool>>,
}

fn train_step(arch: &str, kernels: Kernels, input_seed: u64) -> Step {
    let dev = device();
    let (varmap, model) =
        new_model_with_kernels(arch, CLASSES, MODEL_SEED, BuildOptions::default(), kernels, &dev).unwrap();
    let initial = variables(&varmap);
    let x = Tensor::from_vec(values(BATCH * 3 * 32 * 32, input_seed), (BATCH, 3, 32, 32), &dev).unwrap();
    let labels: Vec<u32> =
        values(BATCH, input_seed + 1000).iter().map(|v| ((v + 1.0) * 5.0) as u32 % 10).collect();
    let labels = Tensor::new(labels.as_slice(), &dev).unwrap();

    relu_probe::start();
    let logits = model.forward(&x, Mode::Train).unwrap().logits;
    let relu_zeros = relu_probe::take();
    let loss = kd_core::losses::cross_entropy(&logits, &labels, 0.0).unwrap();
    let grads = loss.backward().unwrap();
    // As kd-cli's `models::optimizer` builds it for `[optimizer] kind = "sgd"`.
    let trainable = trainable_vars(&varmap);
    let mut sgd = Sgd::new(trainable.clone(), 0.1, 0.9, false, 5e-4).unwrap();
    sgd.step(&grads).unwrap();
    let grads = trainable
        .iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
            (name.clone(), to_vec(g))
        })
        .collect();
    let eval_logits = to_vec(&model.forward(&x, Mode::Eval).unwrap().logits);
    Step {
        initial,
        train_logits: to_vec(&logits),
        loss: loss.to_scalar::<f32>().unwrap(),
        grads,
        after: variables(&varmap),
        eval_logits,
        relu_zeros,
    }
}

/// `max |a - b| / max |b|` (`b` the generic path); infinite for NaNs or a length mismatch.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            m.max(d)
        }
    });
    diff / scale
}

/// The worst [`rel_diff`] over the tensors of two maps with the same names, and its name.
fn worst(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (f32, String) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "different variables");
    a.iter().map(|(k, v)| (rel_diff(v, &b[k]), k.clone())).fold((0.0, String::new()), |m, d| {
        if d.0 > m.0 {
            d
        } else {
            m
        }
    })
}

/// `‖a - b‖ / ‖b‖` over all tensors together.
fn l2_rel(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (k, v) in a {
        for (x, y) in v.iter().zip(&b[k]) {
            diff += (*x as f64 - *y as f64).powi(2);
            norm += (*y as f64).powi(2);
        }
    }
    (diff / norm.max(1e-300)).sqrt()
}

/// ReLU units zeroed by one path and not the other.
fn relu_flips(a: &[Vec<bool>], b: &[Vec<bool>]) -> usize {
    assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    a.iter().zip(b).map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count()).sum()
}

fn only(m: &BTreeMap<String, Vec<f32>>, running_stats: bool) -> BTreeMap<String, Vec<f32>> {
    let is_stat = |k: &str| k.ends_with("running_mean") || k.ends_with("running_var");
    m.iter().filter(|(k, _)| is_stat(k) == running_stats).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The worst difference of the running statistics: a running variance relative to its largest
/// value, a running mean relative to the larger of its largest value and the largest running
/// standard deviation of its layer (a mean of zero-mean data is all rounding).
fn worst_stats(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (f32, String) {
    let (a, b) = (only(a, true), only(b, true));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "different statistics");
    let mut worst = (0f32, String::new());
    for (k, v) in &a {
        let reference = &b[k];
        let mut scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        if let Some(layer) = k.strip_suffix("running_mean") {
            let var = &b[&format!("{layer}running_var")];
            scale = var.iter().fold(scale, |m, x| m.max(x.abs().sqrt()));
        }
        let diff = v.iter().zip(reference).fold(0f32, |m, (x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                m.max(d)
            }
        });
        let d = diff / scale.max(1e-12);
        if d > worst.0 {
            worst = (d, k.clone());
        }
    }
    worst
}

fn bit_identical(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn assert_under(arch: &str, seed: u64, what: &str, value: f32, tol: f32) {
    assert!(
        value <= tol,
        "{arch}, input seed {seed}: {what} differ by {value:.3e} (relative), over {tol:.0e}"
    );
}

fn check_fast_matches_generic(arch: &str) {
    for seed in INPUT_SEEDS {
        let fast = train_step(arch, Kernels::Fast, seed);
        let generic = train_step(arch, Kernels::Generic, seed);
        assert_eq!(fast.initial, generic.initial, "{arch}: the same seed must give the same initial weights");
        assert!(!fast.relu_zeros.is_empty(), "{arch}: the ReLU probe recorded nothing");

        // Forward values are continuous in rounding errors: tight whether or not a unit flipped.
        let logits = rel_diff(&fast.train_logits, &generic.train_logits);
        let loss = (fast.loss - generic.loss).abs() / generic.loss.abs();
        let (stats, stat_at) = worst_stats(&fast.after, &generic.after);
        assert!(fast.loss.is_finite() && fast.loss > 0.0, "{arch}: loss {}", fast.loss);
        assert_under(arch, seed, "train logits", logits, TOL_LOGITS);
        assert_under(arch, seed, "losses", loss, TOL_LOSS);
        assert_under(arch, seed, "running statistics", stats, TOL_RUNNING_STATS);

        let flips = relu_flips(&fast.relu_zeros, &generic.relu_zeros);
        let units: usize = fast.relu_zeros.iter().map(Vec::len).sum();
        let (grads, grad_at) = worst(&fast.grads, &generic.grads);
        let grads_l2 = l2_rel(&fast.grads, &generic.grads);
        if flips > 0 {
            eprintln!(
                "{arch}, input seed {seed}: {flips} of {units} ReLU units flipped; train logits {logits:.2e}, \
                 loss {loss:.2e}, running stats {stats:.2e} ({stat_at}); gradients {grads:.2e} ({grad_at}), \
                 all together {grads_l2:.2e} (not compared tightly); trying the next input"
            );
            assert!(
                grads_l2 <= TOL_GRADS_L2_WITH_FLIPS,
                "{arch}, input seed {seed}: gradients differ by {grads_l2:.3e} (relative L2), more than \
                 {flips} flipped ReLU units explain ({TOL_GRADS_L2_WITH_FLIPS:.0e})"
            );
            continue;
        }

        let (updated, updated_at) = worst(&only(&fast.after, false), &only(&generic.after, false));
        let eval = rel_diff(&fast.eval_logits, &generic.eval_logits);
        eprintln!(
            "{arch}, input seed {seed}: no ReLU flip in {units} units; train logits {logits:.2e}, loss {loss:.2e} \
             ({} vs {}), gradients {grads:.2e} ({grad_at}), all together {grads_l2:.2e}, updated variables \
             {updated:.2e} ({updated_at}), running stats {stats:.2e} ({stat_at}), eval logits {eval:.2e}",
            fast.loss, generic.loss
        );
        assert_under(arch, seed, "gradients", grads, TOL_GRADS);
        assert!(
            grads_l2 <= TOL_GRADS_L2,
            "{arch}, input seed {seed}: gradients differ by {grads_l2:.3e} (relative L2), over {TOL_GRADS_L2:.0e}"
        );
        assert_under(arch, seed, "updated variables", updated, TOL_UPDATED);
        assert_under(arch, seed, "eval logits", eval, TOL_EVAL_LOGITS);
        // The step really moved the weights and the statistics.
        let moved =
            |stats: bool| only(&fast.after, stats).iter().any(|(k, v)| !bit_identical(v, &fast.initial[k]));
        assert!(moved(false) && moved(true), "{arch}: the step changed nothing");
        // Two different implementations: somewhere the last bits differ.
        assert!(
            !bit_identical(&fast.train_logits, &generic.train_logits)
                || fast.grads.iter().any(|(k, v)| !bit_identical(v, &generic.grads[k])),
            "{arch}: the fast and generic paths agree bit for bit; is `Generic` running the fast kernels?"
        );
        return;
    }
    panic!("{arch}: a ReLU unit flipped on every input of {INPUT_SEEDS:?}; gradients never compared tightly");
}

/// akamaster ResNet-20: option-A shortcuts (subsample + zero channels), fused BN + ReLU.
#[test]
fn resnet20_generic_path_matches_fast_path() {
    check_fast_matches_generic("resnet20");
}

/// RepDistiller's ResNet-20 with option-B shortcuts (1×1 conv + BN projections).
#[test]
fn resnet20b_generic_path_matches_fast_path() {
    check_fast_matches_generic("resnet20b");
}

/// WRN-16-1: pre-activation blocks, 1×1 shortcut convolutions.
#[test]
fn wrn_16_1_generic_path_matches_fast_path() {
    check_fast_matches_generic("wrn_16_1");
}

/// The default build is the fast path on the CPU, exactly what `Kernels::Fast` builds.
#[test]
fn default_build_is_the_fast_path_on_cpu() {
    let dev = device();
    assert_eq!(Kernels::for_device(&dev), Kernels::Fast);
    let x = Tensor::from_vec(values(2 * 3 * 32 * 32, 21), (2, 3, 32, 32), &dev).unwrap();
    let (_, default) = new_model("resnet8", CLASSES, 3, &dev).unwrap();
    let (_, fast) =
        new_model_with_kernels("resnet8", CLASSES, 3, BuildOptions::default(), Kernels::Fast, &dev).unwrap();
    for mode in [Mode::Train, Mode::Eval] {
        let a = to_vec(&default.forward(&x, mode).unwrap().logits);
        let b = to_vec(&fast.forward(&x, mode).unwrap().logits);
        assert!(bit_identical(&a, &b), "{mode:?}");
    }
}

/// The choice is read only while building and only on the building thread, and is restored
/// afterwards (also after a panic), so parallel tests and later builds do not inherit it.
#[test]
fn kernels_choice_is_scoped_to_the_build() {
    let dev = device();
    let conv = || {
        let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &dev);
        Conv2d::new(3, 4, 3, 1, 1, candle_nn::Init::Const(0.0), vb).unwrap()
    };
    assert_eq!(conv().kernels(), Kernels::Fast);
    let inner = build_with_kernels(Kernels::Generic, || {
        let outer = conv().kernels();
        let nested = build_with_kernels(Kernels::Fast, || conv().kernels());
        let other_thread = std::thread::scope(|s| s.spawn(|| conv().kernels()).join().unwrap());
        (outer, nested, conv().kernels(), other_thread)
    });
    assert_eq!(inner, (Kernels::Generic, Kernels::Fast, Kernels::Generic, Kernels::Fast));
    assert_eq!(conv().kernels(), Kernels::Fast);
    let panicked = std::panic::catch_unwind(|| {
        build_with_kernels(Kernels::Generic, || {
            panic!("deliberate panic inside build_with_kernels (expected)")
        })
    });
    assert!(panicked.is_err());
    assert_eq!(conv().kernels(), Kernels::Fast);
    assert_eq!(conv().with_kernels(Kernels::Generic).kernels(), Kernels::Generic);
}

/// The other families' fast ops (VGG's channel bias, MobileNetV2's and ShuffleNetV2's
/// depthwise convolution) honour the choice too: train- and eval-mode logits and the running
/// statistics agree tightly and not bit for bit (forward values only: they are continuous in
/// rounding errors, unlike gradients; see the module docs).
#[test]
fn other_families_forward_matches_fast_path() {
    let dev = device();
    let x = Tensor::from_vec(values(4 * 3 * 32 * 32, 31), (4, 3, 32, 32), &dev).unwrap();
    // Logits tolerances per family: MobileNetV2's are ~1.3e-5 from an f64 run on both paths
    // Measured: logits vgg8 1.1e-6, MobileNetV2 1.7e-5, ShuffleV2 6.0e-6; running statistics
    // 1.2e-7, 6.6e-6, 4.3e-7.
    for (arch, tol_logits, tol_stats) in
        [("vgg8", TOL_LOGITS, TOL_RUNNING_STATS), ("MobileNetV2", 1e-4, 3e-5), ("ShuffleV2", 3e-5, 3e-6)]
    {
        let run = |kernels| {
            let (varmap, model) =
                new_model_with_kernels(arch, CLASSES, MODEL_SEED, BuildOptions::default(), kernels, &dev)
                    .unwrap();
            let train = to_vec(&model.forward(&x, Mode::Train).unwrap().logits);
            let eval = to_vec(&model.forward(&x, Mode::Eval).unwrap().logits);
            (train, eval, variables(&varmap))
        };
        let (fast, generic) = (run(Kernels::Fast), run(Kernels::Generic));
        let (train, eval) = (rel_diff(&fast.0, &generic.0), rel_diff(&fast.1, &generic.1));
        let (stats, stat_at) = worst_stats(&fast.2, &generic.2);
        eprintln!(
            "{arch}: train logits {train:.2e}, eval logits {eval:.2e}, running stats {stats:.2e} ({stat_at})"
        );
        assert_under(arch, 31, "train logits", train, tol_logits);
        assert_under(arch, 31, "eval logits", eval, tol_logits.max(TOL_EVAL_LOGITS));
        assert_under(arch, 31, "running statistics", stats, tol_stats);
        assert!(!bit_identical(&fast.0, &generic.0), "{arch}: the paths agree bit for bit");
    }
}
