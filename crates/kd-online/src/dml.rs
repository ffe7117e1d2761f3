//! Deep mutual learning (Zhang et al., CVPR 2018).
//!
//! All peers see the same batch; peer `k` minimises
//! `L_k = CE(y, z_k) + 1/(K−1)·Σ_{j≠k} T²·KL(softmax(z_j/T) ‖ softmax(z_k/T))` with every `z_j`
//! (j ≠ k) detached. The trainer back-propagates `Σ_k L_k` once: since `L_k` depends on peer
//! `k`'s parameters only through `z_k`, each peer's gradient is exactly that of its own loss
//! (tested), and the optimiser keeps per-variable state, so every peer has its own momentum.
//!
//! The paper's Algorithm 1 updates the peers one after the other, re-predicting with the updated
//! peer before the next update; like most re-implementations, this updates all peers at once
//! from the same step's predictions (one forward per peer per step).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use kd_core::losses::{cross_entropy, kl_to_targets, soft_targets};
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use serde::{Deserialize, Serialize};

use crate::{parse_table, OnlineError};

fn default_temperature() -> f64 {
    1.0
}

/// `[distill]` of `method = "dml"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmlConfig {
    /// Architecture of each peer (`K = peers.len() ≥ 2`), e.g. `["resnet32", "resnet32"]`.
    pub peers: Vec<String>,
    /// Softmax temperature of the mimicry term (the paper uses 1); the KL is scaled by `T²`.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

impl DmlConfig {
    pub fn from_table(table: &toml::Table) -> std::result::Result<Self, OnlineError> {
        let cfg: DmlConfig = parse_table("dml", table)?;
        let fail = |message: String| Err(OnlineError::Config { method: "dml", message });
        if cfg.peers.len() < 2 {
            return fail(format!("peers must name at least 2 architectures, got {:?}", cfg.peers));
        }
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            return fail(format!("temperature must be > 0, got {}", cfg.temperature));
        }
        Ok(cfg)
    }
}

/// The terms of one DML loss evaluation.
pub struct DmlTerms {
    /// `Σ_k L_k`, what gets back-propagated.
    pub total: Tensor,
    /// `L_k` per peer.
    pub per_peer: Vec<Tensor>,
    /// `CE(y, z_k)` per peer.
    pub ce: Vec<Tensor>,
    /// `1/(K−1)·Σ_{j≠k} T²·KL(p_j ‖ p_k)` per peer.
    pub kl: Vec<Tensor>,
}

/// The DML losses of `K ≥ 2` peers' `(batch, classes)` logits against `labels`.
pub fn dml_loss(logits: &[Tensor], labels: &Tensor, temperature: f64) -> Result<DmlTerms> {
    let k = logits.len();
    if k < 2 {
        candle_core::bail!("deep mutual learning needs at least 2 peers, got {k}");
    }
    // Each peer's softened prediction as a constant target for the others.
    let targets =
        logits.iter().map(|z| soft_targets(&z.detach(), temperature)).collect::<Result<Vec<_>>>()?;
    let t2 = temperature * temperature;
    let (mut per_peer, mut ce, mut kl) =
        (Vec::with_capacity(k), Vec::with_capacity(k), Vec::with_capacity(k));
    for (i, z) in logits.iter().enumerate() {
        let c = cross_entropy(z, labels, 0.0)?;
        let mut sum: Option<Tensor> = None;
        for (j, p) in targets.iter().enumerate() {
            if j != i {
                let term = kl_to_targets(z, p, temperature)?;
                sum = Some(match sum {
                    Some(s) => (s + term)?,
                    None => term,
                });
            }
        }
        let m = (sum.expect("k >= 2") * (t2 / (k - 1) as f64))?;
        per_peer.push((&c + &m)?);
        ce.push(c);
        kl.push(m);
    }
    let mut total = per_peer[0].clone();
    for l in &per_peer[1..] {
        total = (total + l)?;
    }
    Ok(DmlTerms { total, per_peer, ce, kl })
}

/// Log of the mean of the peers' softmax outputs (the peers' ensemble, as logits).
pub fn ensemble_log_probs(logits: &[Tensor]) -> Result<Tensor> {
    let probs = logits.iter().map(candle_nn::ops::softmax_last_dim).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&probs, 0)?.mean(0)?.clamp(1e-30, 1.0)?.log()
}

/// DML as a [`Method`]: variant `dml`; evaluates `peer-1` … `peer-K` and their `ensemble`
/// (mean of the peers' probabilities).
pub struct DeepMutualLearning {
    peers: Vec<Arc<dyn Classifier>>,
    temperature: f64,
}

impl DeepMutualLearning {
    /// Refuses fewer than 2 peers or peers with different label spaces.
    pub fn new(peers: Vec<Arc<dyn Classifier>>, cfg: &DmlConfig) -> std::result::Result<Self, OnlineError> {
        if peers.len() < 2 {
            return Err(OnlineError::Config {
                method: "dml",
                message: format!("at least 2 peers are needed, got {}", peers.len()),
            });
        }
        let classes = peers[0].num_classes();
        if peers.iter().any(|p| p.num_classes() != classes) {
            let spaces: Vec<String> = peers
                .iter()
                .enumerate()
                .map(|(i, p)| format!("peer-{} {}: {}", i + 1, p.arch(), p.num_classes()))
                .collect();
            return Err(OnlineError::LabelSpace(spaces.join(", ")));
        }
        Ok(Self { peers, temperature: cfg.temperature })
    }
}

impl Method for DeepMutualLearning {
    fn name(&self) -> &str {
        "dml"
    }

    fn variant(&self) -> &str {
        "dml"
    }

    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> Result<Losses> {
        let logits = self
            .peers
            .iter()
            .map(|p| Ok(p.forward(&batch.inputs, Mode::Train)?.logits))
            .collect::<Result<Vec<_>>>()?;
        let terms = dml_loss(&logits, &batch.labels, self.temperature)?;
        let mut parts = Vec::with_capacity(2 * self.peers.len());
        for (k, (ce, kl)) in terms.ce.iter().zip(&terms.kl).enumerate() {
            parts.push((format!("ce-{}", k + 1), ce.detach()));
            parts.push((format!("kl-{}", k + 1), kl.detach()));
        }
        Ok(Losses { total: terms.total, parts })
    }

    fn eval_entries(&self) -> Vec<EvalEntry> {
        let mut entries: Vec<EvalEntry> = self
            .peers
            .iter()
            .enumerate()
            .map(|(k, p)| EvalEntry::of(&format!("peer-{}", k + 1), p.as_ref()))
            .collect();
        entries.push(EvalEntry {
            role: "ensemble".into(),
            model: self.peers.iter().map(|p| p.arch()).collect::<Vec<_>>().join("+"),
            params: self.peers.iter().map(|p| p.num_params()).sum(),
        });
        entries
    }

    fn eval_logits(&self, inputs: &Tensor) -> Result<Vec<Tensor>> {
        let mut logits = self
            .peers
            .iter()
            .map(|p| Ok(p.forward(inputs, Mode::Eval)?.logits))
            .collect::<Result<Vec<_>>>()?;
        let ensemble = ensemble_log_probs(&logits)?;
        logits.push(ensemble);
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use kd_core::ModelOutput;

    // Golden values from an independent pure-Python computation (no framework):
    //
    //   import math
    //   def softmax(z,T=1.): zz=[x/T for x in z]; m=max(zz); e=[math.exp(x-m) for x in zz]; return [x/sum(e) for x in e]
    //   def logsoftmax(z,T=1.):
    //       zz=[x/T for x in z]; m=max(zz); l=math.log(sum(math.exp(x-m) for x in zz))+m; return [x-l for x in zz]
    //   def ce(Z,y): return sum(-logsoftmax(Z[i])[y[i]] for i in range(len(Z)))/len(Z)
    //   def kl(Zt,Zs,T):   # T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean
    //       return T*T*sum(sum(p*(math.log(p)-l) for p,l in zip(softmax(t,T),logsoftmax(s,T)))
    //                      for t,s in zip(Zt,Zs))/len(Zt)
    //   P=[P1,P2,P3] (below); y=[2,3]; T=2; K=3
    //   for k: c=ce(P[k],y); m=sum(kl(P[j],P[k],T) for j!=k)/(K-1); print(c, m, c+m)
    //   # gradient of L_1 wrt z_1, closed form (checked against central differences, h=1e-6, to 1e-7):
    //   # (softmax(z_1)-onehot)/N + T/((K-1)·N)·Σ_{j≠1}(softmax(z_1/T)-softmax(z_j/T))
    const P: [[[f32; 4]; 2]; 3] = [
        [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0]],
        [[2.0, 0.0, 3.5, -1.0], [1.0, 0.5, -0.5, 2.0]],
        [[-1.0, 2.5, 0.5, 0.0], [0.3, -0.2, 0.8, 1.1]],
    ];
    const CE: [f32; 3] = [0.308_042_87, 0.374_650_78, 1.561_242_8];
    const KL: [f32; 3] = [0.942_190_35, 1.051_536_8, 1.376_917_3];
    const TOTAL: f32 = 5.614_581;
    const GRAD1: [[f64; 4]; 2] = [
        [0.191678031169, -0.174497275319, -0.148876119648, 0.131695363798],
        [-0.058628319459, -0.015976969607, -0.109723490794, 0.184328779859],
    ];

    fn labels() -> Tensor {
        Tensor::new(&[2u32, 3], &Device::Cpu).unwrap()
    }

    #[test]
    fn dml_loss_matches_golden_values() {
        let z: Vec<Tensor> = P.iter().map(|p| Tensor::new(p, &Device::Cpu).unwrap()).collect();
        let t = dml_loss(&z, &labels(), 2.0).unwrap();
        let get = |x: &Tensor| x.to_scalar::<f32>().unwrap();
        for k in 0..3 {
            assert!((get(&t.ce[k]) - CE[k]).abs() < 1e-5, "ce {k}: {}", get(&t.ce[k]));
            assert!((get(&t.kl[k]) - KL[k]).abs() < 1e-5, "kl {k}: {}", get(&t.kl[k]));
            assert!((get(&t.per_peer[k]) - CE[k] - KL[k]).abs() < 1e-5);
        }
        assert!((get(&t.total) - TOTAL).abs() < 1e-4, "total {}", get(&t.total));
    }

    #[test]
    fn dml_gradient_of_a_peer_is_that_of_its_own_loss() {
        let vars: Vec<Var> = P.iter().map(|p| Var::new(p, &Device::Cpu).unwrap()).collect();
        let z: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let t = dml_loss(&z, &labels(), 2.0).unwrap();
        let grads = t.total.backward().unwrap();
        let g = grads.get(&z[0]).unwrap().to_vec2::<f32>().unwrap();
        for (row, want) in g.iter().zip(GRAD1.iter()) {
            for (a, b) in row.iter().zip(want) {
                assert!((*a as f64 - b).abs() < 1e-6, "grad {a} vs {b}");
            }
        }
    }

    /// A linear "peer": logits = x·W. Enough to follow gradients to parameters.
    struct Linear {
        w: Var,
    }
    impl Classifier for Linear {
        fn forward(&self, input: &Tensor, _mode: Mode) -> Result<ModelOutput> {
            let logits = input.matmul(self.w.as_tensor())?;
            Ok(ModelOutput { embedding: input.clone(), stage_features: vec![], logits })
        }
        fn num_classes(&self) -> usize {
            self.w.dim(1).unwrap()
        }
        fn arch(&self) -> &str {
            "linear"
        }
        fn num_params(&self) -> usize {
            self.w.elem_count()
        }
    }

    #[test]
    fn each_peer_gets_gradient_only_through_its_own_loss() {
        let dev = Device::Cpu;
        let peers: Vec<Arc<Linear>> = (0..3)
            .map(|k| {
                Arc::new(Linear {
                    w: Var::randn_f64(0.0, 1.0 + k as f64 * 0.3, (5, 4), candle_core::DType::F32, &dev)
                        .unwrap(),
                })
            })
            .collect();
        let x = Tensor::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 3, 1, 2], &dev).unwrap();
        let z: Vec<Tensor> = peers.iter().map(|p| p.forward(&x, Mode::Train).unwrap().logits).collect();
        let terms = dml_loss(&z, &y, 3.0).unwrap();
        let total = terms.total.backward().unwrap();
        for (k, peer) in peers.iter().enumerate() {
            let own = terms.per_peer[k].backward().unwrap();
            // L_k reaches no other peer's parameters.
            for (j, other) in peers.iter().enumerate() {
                if j != k {
                    assert!(own.get(other.w.as_tensor()).is_none(), "L_{} reached peer {}", k + 1, j + 1);
                }
            }
            // Peer k's gradient from the summed loss is its own loss's gradient.
            let a = total.get(peer.w.as_tensor()).unwrap();
            let b = own.get(peer.w.as_tensor()).unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "peer {}: {diff}", k + 1);
            // ... and the mimicry term does contribute (it is not only the CE gradient).
            let ce_only = terms.ce[k].backward().unwrap();
            let d = (a - ce_only.get(peer.w.as_tensor()).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() > 1e-4);
        }

        // Through the Method: same total, eval rows peer-1..3 and the ensemble.
        let cfg = DmlConfig { peers: vec!["linear".into(); 3], temperature: 3.0 };
        let mut m =
            DeepMutualLearning::new(peers.iter().map(|p| p.clone() as Arc<dyn Classifier>).collect(), &cfg)
                .unwrap();
        let batch = Batch {
            inputs: x.clone(),
            labels: y,
            example_ids: (0..6).collect(),
            views: vec![0; 6],
            strong: None,
        };
        let ctx = StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 };
        let l = m.losses(&batch, &ctx).unwrap();
        let want = terms.total.to_scalar::<f32>().unwrap();
        assert!((l.total.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
        let roles: Vec<String> = m.eval_entries().into_iter().map(|e| e.role).collect();
        assert_eq!(roles, ["peer-1", "peer-2", "peer-3", "ensemble"]);
        assert_eq!(m.eval_entries()[3].params, 60);
        let ev = m.eval_logits(&x).unwrap();
        assert_eq!(ev.len(), 4);
        // The ensemble's probabilities are the mean of the peers'.
        let mean = Tensor::stack(
            &ev[..3].iter().map(|t| candle_nn::ops::softmax_last_dim(t).unwrap()).collect::<Vec<_>>(),
            0,
        )
        .unwrap()
        .mean(0)
        .unwrap();
        let diff = (ev[3].exp().unwrap() - mean).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn config_defaults_and_errors() {
        let ok: toml::Table = toml::from_str("peers = [\"resnet32\", \"resnet20\"]").unwrap();
        let cfg = DmlConfig::from_table(&ok).unwrap();
        assert_eq!((cfg.peers.len(), cfg.temperature), (2, 1.0));
        let one: toml::Table = toml::from_str("peers = [\"resnet32\"]").unwrap();
        assert!(DmlConfig::from_table(&one).unwrap_err().to_string().contains("at least 2"));
        let typo: toml::Table = toml::from_str("peers = [\"a\", \"b\"]\ntemprature = 2").unwrap();
        let e = DmlConfig::from_table(&typo).unwrap_err().to_string();
        assert!(e.contains("temprature") && e.contains("dml"), "{e}");
        let bad: toml::Table = toml::from_str("peers = [\"a\", \"b\"]\ntemperature = 0").unwrap();
        assert!(DmlConfig::from_table(&bad).unwrap_err().to_string().contains("temperature"));
    }
}
