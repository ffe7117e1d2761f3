//! CRD's memory bank and negative sampler: the non-trainable state of contrastive
//! representation distillation (Tian et al., ICLR 2020).
//!
//! Reference: RepDistiller `crd/memory.py` `ContrastMemory` (bank, normalisation constants,
//! momentum update) and `dataset/cifar100.py` `CIFAR100InstanceSample` / `AliasMethod` (where
//! the negatives come from). Both banks, the two constants and the sampler's generator live in
//! variables ([`candle_core::Var`], never optimised) that [`ContrastMemory::buffers`] /
//! [`NegativeSampler::buffers`] hand out, so a pipeline checkpoints and restores them with the
//! models and a resumed run continues bit-exactly; every step reads its state from them.
//! [`ContrastMemory::state`] / [`NegativeSampler::state`] export copies as named tensors.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Names of the exported state, as the reference's `CRDLoss.state_dict()` spells them
/// (`contrast.params` is `[nce_k, nce_t, Z_v1, Z_v2, nce_m]`, Z = −1 until the first batch).
pub const MEMORY_V1: &str = "contrast.memory_v1";
pub const MEMORY_V2: &str = "contrast.memory_v2";
pub const PARAMS: &str = "contrast.params";
/// The negative sampler's generator state (one `i64`, the bits of a SplitMix64 state).
pub const SAMPLER_STATE: &str = "sampler.state";

/// The two memory banks of CRD and their normalisation constants.
///
/// `memory_v1` holds (momentum-averaged, unit-norm) *student* embeddings and is read with the
/// teacher embedding as anchor; `memory_v2` holds teacher embeddings and is read with the
/// student embedding as anchor — exactly as `ContrastMemory.forward(v1 = f_s, v2 = f_t)`.
#[derive(Debug)]
pub struct ContrastMemory {
    memory_v1: Var,
    memory_v2: Var,
    /// `contrast.params` in the banks' dtype: `[nce_k, nce_t, Z_v1, Z_v2, nce_m]`. `Z_v1`
    /// (student-anchor scores) and `Z_v2` (teacher-anchor scores) are fixed from the first
    /// batch, −1 before it; read from here on every step.
    params: Var,
    nce_k: usize,
    temperature: f64,
    momentum: f64,
}

impl ContrastMemory {
    /// Banks of `n_data` rows of `feat_dim`, initialised as the reference does:
    /// uniform in `[-stdv, stdv)`, `stdv = 1 / sqrt(feat_dim / 3)` (rows are *not* unit-norm
    /// until first visited), drawn from `seed`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        n_data: usize,
        feat_dim: usize,
        nce_k: usize,
        temperature: f64,
        momentum: f64,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let stdv = 1.0 / (feat_dim as f64 / 3.0).sqrt();
        let mut rng = SplitMix64::new(seed);
        let mut bank = || -> Result<Tensor> {
            let v: Vec<f64> = (0..n_data * feat_dim).map(|_| rng.next_f64() * 2.0 * stdv - stdv).collect();
            Tensor::from_vec(v, (n_data, feat_dim), device)?.to_dtype(dtype)
        };
        let memory_v1 = Var::from_tensor(&bank()?)?;
        let memory_v2 = Var::from_tensor(&bank()?)?;
        let params = [nce_k as f64, temperature, -1.0, -1.0, momentum];
        let params = Var::from_tensor(&Tensor::new(&params, device)?.to_dtype(dtype)?)?;
        Ok(Self { memory_v1, memory_v2, params, nce_k, temperature, momentum })
    }

    pub fn n_data(&self) -> usize {
        self.memory_v1.dims()[0]
    }

    pub fn feat_dim(&self) -> usize {
        self.memory_v1.dims()[1]
    }

    pub fn nce_k(&self) -> usize {
        self.nce_k
    }

    /// `(Z_v1, Z_v2)` once the first batch has fixed them.
    pub fn normalisers(&self) -> Result<(Option<f64>, Option<f64>)> {
        let p: Vec<f64> = self.params.as_tensor().to_dtype(DType::F64)?.to_vec1()?;
        let z = |v: f64| (v >= 0.0).then_some(v);
        Ok((z(p[2]), z(p[3])))
    }

    /// The bank's variables, named as [`ContrastMemory::state`] names them: both banks and
    /// `contrast.params`. Non-trainable; [`ContrastMemory::forward`] updates them in place.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        vec![
            (MEMORY_V1.to_string(), self.memory_v1.clone()),
            (MEMORY_V2.to_string(), self.memory_v2.clone()),
            (PARAMS.to_string(), self.params.clone()),
        ]
    }

    /// `ContrastMemory.forward`: scores of the `nce_k + 1` bank rows named by `contrast_idx`
    /// (`(B, nce_k + 1)`, column 0 the positive) against each anchor, `exp(<m, v> / T) / Z`,
    /// then the momentum update of the positives' rows. Returns `(out_v1, out_v2)`:
    /// `out_v1` = student anchor `v1` against the teacher bank, `out_v2` = teacher anchor `v2`
    /// against the student bank, both `(B, nce_k + 1)`. The banks enter as constants.
    pub fn forward(
        &mut self,
        v1: &Tensor,
        v2: &Tensor,
        y: &Tensor,
        contrast_idx: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (batch, dim) = v1.dims2()?;
        if v2.dims2()? != (batch, dim) || dim != self.feat_dim() {
            candle_core::bail!(
                "CRD memory: embeddings {:?} and {:?} do not fit a bank of dimension {}",
                v1.dims(),
                v2.dims(),
                self.feat_dim()
            );
        }
        if contrast_idx.dims2()? != (batch, self.nce_k + 1) {
            candle_core::bail!(
                "CRD memory: contrast_idx is {:?}, expected (batch {batch}, nce_k + 1 = {})",
                contrast_idx.dims(),
                self.nce_k + 1
            );
        }
        let flat = contrast_idx.flatten_all()?;
        let scores = |bank: &Tensor, anchor: &Tensor| -> Result<Tensor> {
            let w = bank.index_select(&flat, 0)?.reshape((batch, self.nce_k + 1, dim))?;
            let s = w.matmul(&anchor.reshape((batch, dim, 1))?)?.squeeze(2)?;
            (s / self.temperature)?.exp()
        };
        let out_v2 = scores(&self.memory_v1.detach(), v2)?;
        let out_v1 = scores(&self.memory_v2.detach(), v1)?;

        // Z = mean score × n_data, in the bank's dtype (the reference keeps it in a float buffer).
        let n = self.n_data() as f64;
        let fix = |out: &Tensor| -> Result<f64> {
            (out.detach().mean_all()? * n)?.to_dtype(DType::F64)?.to_scalar::<f64>()
        };
        let (z_v1, z_v2) = match self.normalisers()? {
            (Some(z1), Some(z2)) => (z1, z2),
            (z1, z2) => {
                let z1 = match z1 {
                    Some(z) => z,
                    None => fix(&out_v1)?,
                };
                let z2 = match z2 {
                    Some(z) => z,
                    None => fix(&out_v2)?,
                };
                let params = [self.nce_k as f64, self.temperature, z1, z2, self.momentum];
                let dev = self.params.device();
                self.params.set(&Tensor::new(&params, dev)?.to_dtype(self.params.dtype())?)?;
                (z1, z2)
            }
        };
        let out_v1 = (out_v1 / z_v1)?;
        let out_v2 = (out_v2 / z_v2)?;

        self.update(&v1.detach(), &v2.detach(), y)?;
        Ok((out_v1, out_v2))
    }

    /// The momentum update of rows `y`: `m ← normalise(momentum · m + (1 − momentum) · v)`.
    /// `y` must not repeat an index within one batch (the reference's `index_copy_` would keep
    /// an arbitrary one of them; a data loader's batch never repeats an example).
    pub fn update(&mut self, v1: &Tensor, v2: &Tensor, y: &Tensor) -> Result<()> {
        let dim = self.feat_dim();
        let rows = y.flatten_all()?;
        let targets = rows.unsqueeze(1)?.broadcast_as((rows.dims()[0], dim))?.contiguous()?;
        let step = |bank: &Tensor, v: &Tensor| -> Result<Tensor> {
            let pos = (bank.index_select(&rows, 0)?.affine(self.momentum, 0.0)?
                + v.affine(1.0 - self.momentum, 0.0)?)?;
            let norm = pos.sqr()?.sum_keepdim(1)?.sqrt()?;
            pos.broadcast_div(&norm)
        };
        let new_v1 = step(&self.memory_v1.detach(), v1)?;
        let new_v2 = step(&self.memory_v2.detach(), v2)?;
        // Writes into the variables in place (`state()` hands out copies).
        self.memory_v1.scatter_set(&targets, &new_v1, 0)?;
        self.memory_v2.scatter_set(&targets, &new_v2, 0)?;
        Ok(())
    }

    /// The banks and `contrast.params` as named tensors (copies), for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.buffers().into_iter().map(|(n, v)| Ok((n, v.detach().copy()?))).collect()
    }

    /// Restores what [`ContrastMemory::state`] exported (or a RepDistiller `CRDLoss` state dict):
    /// shapes, `nce_k`, `nce_t` and `nce_m` must agree with this bank.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
        let get = |name: &str| state.get(name).ok_or_else(|| format!("CRD state has no tensor `{name}`"));
        let (dtype, device) = (self.memory_v1.dtype(), self.memory_v1.device().clone());
        let mut banks = Vec::with_capacity(2);
        for name in [MEMORY_V1, MEMORY_V2] {
            let t = get(name)?;
            if t.dims() != self.memory_v1.dims() {
                return Err(format!(
                    "CRD state `{name}` is {:?}, this bank is {:?}",
                    t.dims(),
                    self.memory_v1.dims()
                ));
            }
            banks.push(
                t.to_device(&device)
                    .and_then(|t| t.to_dtype(dtype))
                    .and_then(|t| t.copy())
                    .map_err(|e| e.to_string())?,
            );
        }
        let params: Vec<f64> = get(PARAMS)?
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|e| e.to_string())?;
        if params.len() != 5 {
            return Err(format!("CRD state `{PARAMS}` has {} values, expected 5", params.len()));
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        if params[0] != self.nce_k as f64
            || !close(params[1], self.temperature)
            || !close(params[4], self.momentum)
        {
            return Err(format!(
                "CRD state was saved with nce_k = {}, nce_t = {}, nce_m = {}; this run has {}, {}, {}",
                params[0], params[1], params[4], self.nce_k, self.temperature, self.momentum
            ));
        }
        let z = |v: f64| if v >= 0.0 { v } else { -1.0 };
        let params = [self.nce_k as f64, self.temperature, z(params[2]), z(params[3]), self.momentum];
        let params =
            Tensor::new(&params, &device).and_then(|t| t.to_dtype(dtype)).map_err(|e| e.to_string())?;
        let set = |var: &Var, t: &Tensor| var.set(t).map_err(|e| e.to_string());
        set(&self.memory_v2, &banks.pop().expect("two banks"))?;
        set(&self.memory_v1, &banks.pop().expect("two banks"))?;
        set(&self.params, &params)
    }
}

/// Where CRD's negatives come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NegativeSampling {
    /// What RepDistiller trains with (`train_student.py` → `CIFAR100InstanceSample`,
    /// `mode='exact'`): `nce_k` examples of *other classes*, without replacement when there are
    /// enough of them, with replacement otherwise. Needs the train set's labels.
    #[default]
    OtherClass,
    /// `ContrastMemory`'s own fallback when no `contrast_idx` is given (`AliasMethod` on
    /// uniform weights): `nce_k` examples uniformly with replacement, possibly the positive.
    Uniform,
}

/// Draws `contrast_idx` deterministically from a seed; its generator's state is a variable
/// ([`NegativeSampler::buffers`], one `i64` on the CPU) read and written by every draw, so a
/// pipeline checkpoints and restores it with the models. (Not `Clone`: a copy would share
/// that variable, so two samplers would advance one generator.)
#[derive(Debug)]
pub struct NegativeSampler {
    mode: NegativeSampling,
    rng: Var,
    n_data: usize,
    /// Train labels (`OtherClass` only).
    labels: Vec<u32>,
    /// Example ids sorted by class, and where each class starts in that order.
    by_class: Vec<u32>,
    class_start: Vec<usize>,
}

impl NegativeSampler {
    pub fn uniform(n_data: usize, seed: u64) -> Self {
        Self {
            mode: NegativeSampling::Uniform,
            rng: rng_var(seed),
            n_data,
            labels: Vec::new(),
            by_class: Vec::new(),
            class_start: Vec::new(),
        }
    }

    /// Negatives from other classes; `labels[i]` is the class of train example `i`.
    pub fn other_class(labels: &[u32], seed: u64) -> Self {
        let classes = labels.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
        let mut class_start = vec![0usize; classes + 1];
        for &c in labels {
            class_start[c as usize + 1] += 1;
        }
        for c in 0..classes {
            class_start[c + 1] += class_start[c];
        }
        let mut next = class_start.clone();
        let mut by_class = vec![0u32; labels.len()];
        for (i, &c) in labels.iter().enumerate() {
            by_class[next[c as usize]] = i as u32;
            next[c as usize] += 1;
        }
        Self {
            mode: NegativeSampling::OtherClass,
            rng: rng_var(seed),
            n_data: labels.len(),
            labels: labels.to_vec(),
            by_class,
            class_start,
        }
    }

    pub fn mode(&self) -> NegativeSampling {
        self.mode
    }

    /// The generator's state variable, named [`SAMPLER_STATE`].
    pub fn buffers(&self) -> Vec<(String, Var)> {
        vec![(SAMPLER_STATE.to_string(), self.rng.clone())]
    }

    /// `(idx.len(), k + 1)` row-major indices: column 0 the positive `idx[b]`, then `k` negatives.
    pub fn draw(&mut self, idx: &[u32], k: usize) -> std::result::Result<Vec<u32>, String> {
        let mut rng = SplitMix64::new(self.rng_state().map_err(|e| format!("CRD `{SAMPLER_STATE}`: {e}"))?);
        let out = self.draw_with(&mut rng, idx, k)?;
        self.rng
            .set(&state_tensor(rng.state, &Device::Cpu).map_err(|e| e.to_string())?)
            .map_err(|e| format!("CRD `{SAMPLER_STATE}`: {e}"))?;
        Ok(out)
    }

    fn rng_state(&self) -> Result<u64> {
        Ok(self.rng.as_tensor().to_dtype(DType::I64)?.to_vec1::<i64>()?[0] as u64)
    }

    fn draw_with(
        &self,
        rng: &mut SplitMix64,
        idx: &[u32],
        k: usize,
    ) -> std::result::Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(idx.len() * (k + 1));
        let mut seen = HashSet::with_capacity(k);
        for &pos in idx {
            if pos as usize >= self.n_data {
                return Err(format!(
                    "CRD: example id {pos} is outside the train set of {} examples",
                    self.n_data
                ));
            }
            out.push(pos);
            match self.mode {
                NegativeSampling::Uniform => {
                    for _ in 0..k {
                        out.push(rng.below(self.n_data as u64) as u32);
                    }
                }
                NegativeSampling::OtherClass => {
                    let c = self.labels[pos as usize] as usize;
                    let (start, len) = (self.class_start[c], self.class_start[c + 1] - self.class_start[c]);
                    let m = self.n_data - len;
                    if m == 0 {
                        return Err(format!("CRD: class {c} is the whole train set; it has no negatives"));
                    }
                    // Rank r among the other classes' examples, skipping class c's block.
                    let pick = |r: usize| self.by_class[if r < start { r } else { r + len }];
                    if k <= m {
                        // Floyd's algorithm: k distinct ranks of m.
                        seen.clear();
                        for j in (m - k)..m {
                            let t = rng.below(j as u64 + 1) as usize;
                            // j is new: every earlier pick is below it.
                            let r = if seen.insert(t) {
                                t
                            } else {
                                seen.insert(j);
                                j
                            };
                            out.push(pick(r));
                        }
                    } else {
                        for _ in 0..k {
                            let r = rng.below(m as u64) as usize;
                            out.push(pick(r));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The generator state as a named `(1,)` i64 tensor (a copy).
    pub fn state(&self, device: &Device) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![(SAMPLER_STATE.to_string(), state_tensor(self.rng_state()?, device)?)])
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
        let t =
            state.get(SAMPLER_STATE).ok_or_else(|| format!("CRD state has no tensor `{SAMPLER_STATE}`"))?;
        let v: Vec<i64> =
            t.flatten_all().and_then(|t| t.to_vec1()).map_err(|e| format!("CRD `{SAMPLER_STATE}`: {e}"))?;
        match v.as_slice() {
            [s] => self
                .rng
                .set(&state_tensor(*s as u64, &Device::Cpu).map_err(|e| e.to_string())?)
                .map_err(|e| format!("CRD `{SAMPLER_STATE}`: {e}")),
            _ => Err(format!("CRD `{SAMPLER_STATE}` has {} values, expected 1", v.len())),
        }
    }
}

/// A SplitMix64 state as a `(1,)` i64 tensor (its bits).
fn state_tensor(state: u64, device: &Device) -> Result<Tensor> {
    Tensor::new(&[state as i64], device)
}

/// The sampler's state variable, on the CPU (it is read on every draw).
fn rng_var(seed: u64) -> Var {
    Var::from_tensor(&state_tensor(seed, &Device::Cpu).expect("a CPU tensor")).expect("a CPU variable")
}

/// SplitMix64 (Steele et al. 2014): one `u64` of state, so it checkpoints as one number.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = self.next_u64() as u128 * n as u128;
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn draws_are_deterministic_from_the_seed() {
        let labels: Vec<u32> = (0..100).map(|i| i % 10).collect();
        let a = NegativeSampler::other_class(&labels, 5).draw(&[3, 17], 20).unwrap();
        let b = NegativeSampler::other_class(&labels, 5).draw(&[3, 17], 20).unwrap();
        let c = NegativeSampler::other_class(&labels, 6).draw(&[3, 17], 20).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn other_class_negatives_are_distinct_and_of_other_classes() {
        let labels: Vec<u32> = (0..60).map(|i| (i * 7 % 3) as u32).collect();
        let mut s = NegativeSampler::other_class(&labels, 0);
        let idx = [0u32, 1, 2, 59];
        let k = 40; // each class has 20 members: exactly 40 others, without replacement
        let out = s.draw(&idx, k).unwrap();
        for (row, &pos) in out.chunks(k + 1).zip(&idx) {
            assert_eq!(row[0], pos);
            let neg: HashSet<u32> = row[1..].iter().copied().collect();
            assert_eq!(neg.len(), k, "repeated negatives");
            assert!(neg.iter().all(|&n| labels[n as usize] != labels[pos as usize]));
        }
        // More than there are: with replacement, still other classes only.
        let out = s.draw(&[5], 100).unwrap();
        assert!(out[1..].iter().all(|&n| labels[n as usize] != labels[5]));
    }

    #[test]
    fn uniform_negatives_cover_the_train_set() {
        let mut s = NegativeSampler::uniform(10, 0);
        let out = s.draw(&[4], 1000).unwrap();
        assert_eq!(out[0], 4);
        let seen: HashSet<u32> = out[1..].iter().copied().collect();
        assert_eq!(seen.len(), 10);
        assert!(s.draw(&[10], 3).is_err());
    }

    #[test]
    fn sampler_state_resumes_the_sequence() {
        let mut a = NegativeSampler::uniform(1000, 9);
        a.draw(&[1, 2], 8).unwrap();
        let state: HashMap<String, Tensor> = a.state(&Device::Cpu).unwrap().into_iter().collect();
        let next = a.draw(&[3], 8).unwrap();
        let mut b = NegativeSampler::uniform(1000, 0);
        b.load_state(&state).unwrap();
        assert_eq!(b.draw(&[3], 8).unwrap(), next);
    }

    #[test]
    fn bank_init_is_the_references_range() {
        let m = ContrastMemory::new(50, 12, 4, 0.07, 0.5, 1, DType::F64, &Device::Cpu).unwrap();
        let stdv = 1.0 / (12f64 / 3.0).sqrt();
        let state = m.state().unwrap();
        let v: Vec<f64> = state[0].1.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.abs() <= stdv));
        assert!(v.iter().any(|x| x.abs() > 0.9 * stdv));
        let params: Vec<f64> = state[2].1.to_vec1().unwrap();
        assert_eq!(params, vec![4.0, 0.07, -1.0, -1.0, 0.5]);
    }

    #[test]
    fn load_state_refuses_another_configuration() {
        let a = ContrastMemory::new(20, 4, 4, 0.07, 0.5, 1, DType::F32, &Device::Cpu).unwrap();
        let state: HashMap<String, Tensor> = a.state().unwrap().into_iter().collect();
        let mut b = ContrastMemory::new(20, 4, 8, 0.07, 0.5, 1, DType::F32, &Device::Cpu).unwrap();
        assert!(b.load_state(&state).unwrap_err().contains("nce_k"));
        let mut c = ContrastMemory::new(30, 4, 4, 0.07, 0.5, 1, DType::F32, &Device::Cpu).unwrap();
        assert!(c.load_state(&state).unwrap_err().contains("memory_v1"));
    }
}
