use super::*;
use candle_core::{Device, Var};
use kd_core::losses::SoftTargetLoss;
use kd_core::model::ModelOutput;

// Golden values from an independent pure-Python computation (no framework):
//
//   import math
//   def softmax(z,T=1.0): zz=[x/T for x in z]; m=max(zz); e=[math.exp(x-m) for x in zz]; return [x/sum(e) for x in e]
//   def logsoftmax(z,T=1.0):
//       zz=[x/T for x in z]; m=max(zz); l=math.log(sum(math.exp(x-m) for x in zz))+m; return [x-l for x in zz]
//   S, TS (3 teachers), y as the constants below; T=4, alpha=0.9, N=B=3
//   weights: mean 1/N; weighted [0.2,0.3,0.5];
//     confidence: ce_n=-logsoftmax(t_n)[y]; w=(1-softmax(ce))/(N-1)
//     entropy: H_n=-sum p log p of softmax(t_n); w=softmax(-H)
//   p_b = sum_n w_bn softmax(t_nb, T_n); kd = T²·mean_b sum_c p (log p - logsoftmax(s_b, T))
//   ce = mean_b -logsoftmax(s_b)[y_b]; total = (1-a)·ce + a·kd
const S: [[f32; 4]; 3] = [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0], [-2.0, 1.5, 0.0, 0.5]];
const TS: [[[f32; 4]; 3]; 3] = [
    [[2.0, 0.0, 3.5, -1.0], [1.0, 0.5, -0.5, 2.0], [-1.0, 2.5, 0.5, 0.0]],
    [[0.5, 0.2, 1.0, 0.1], [3.0, 0.0, 0.0, 1.0], [0.0, 4.0, -1.0, 1.0]],
    [[-1.0, 0.0, 2.0, 2.5], [0.0, 0.0, 0.0, 0.5], [2.0, 1.0, 0.0, 0.0]],
];
const Y: [u32; 3] = [2, 3, 0];
const CE: f32 = 1.533_085_6;

fn tensors() -> (Tensor, Vec<Tensor>, Tensor) {
    let dev = Device::Cpu;
    let s = Tensor::new(&S, &dev).unwrap();
    let ts = TS.iter().map(|t| Tensor::new(t, &dev).unwrap()).collect();
    (s, ts, Tensor::new(&Y, &dev).unwrap())
}

fn cfg(extra: &str) -> MultiTeacherConfig {
    let t: toml::Table = toml::from_str(&format!("temperature = 4.0\nalpha = 0.9\n{extra}")).unwrap();
    MultiTeacherConfig::from_table(&t, &names(3)).unwrap()
}

fn names(n: usize) -> Vec<String> {
    ["resnet20", "resnet32", "resnet56", "resnet44"][..n].iter().map(|s| s.to_string()).collect()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

fn check(rule: CombinationRule, cfg: &MultiTeacherConfig, kd: f32, total: f32) -> Vec<Vec<f32>> {
    let (s, ts, y) = tensors();
    let terms = MultiTeacherLoss::new(rule, cfg, 3).compute(&s, &ts, &y).unwrap();
    assert!((scalar(&terms.ce) - CE).abs() < 1e-5, "ce {}", scalar(&terms.ce));
    assert!((scalar(&terms.kd) - kd).abs() < 1e-5, "kd {} vs {kd}", scalar(&terms.kd));
    assert!((scalar(&terms.total) - total).abs() < 1e-5, "total {} vs {total}", scalar(&terms.total));
    terms.weights.to_vec2::<f32>().unwrap()
}

fn assert_close(got: &[Vec<f32>], want: &[[f32; 3]; 3]) {
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-5, "weights {got:?} vs {want:?}");
        }
    }
}

#[test]
fn mean_rule_matches_golden_values() {
    let w = check(CombinationRule::Mean, &cfg(""), 0.453_078_7, 0.561_079_4);
    assert!(w.iter().flatten().all(|x| (x - 1.0 / 3.0).abs() < 1e-6));
}

#[test]
fn weighted_rule_matches_golden_values() {
    let c = cfg("weights = [0.2, 0.3, 0.5]");
    let rule = CombinationRule::for_variant("weighted", &c).unwrap();
    let w = check(rule, &c, 0.595_762_9, 0.689_495_2);
    assert_close(&w, &[[0.2, 0.3, 0.5]; 3]);
}

#[test]
fn confidence_rule_matches_golden_values() {
    let w = check(CombinationRule::Confidence, &cfg(""), 0.446_376_8, 0.555_047_7);
    assert_close(
        &w,
        &[
            [0.403_635_7, 0.312_335_1, 0.284_029_2],
            [0.438_568_2, 0.164_96, 0.396_471_8],
            [0.296_752_7, 0.211_308, 0.491_939_3],
        ],
    );
}

#[test]
fn entropy_rule_matches_golden_values() {
    let w = check(CombinationRule::Entropy, &cfg(""), 0.472_640_5, 0.578_685);
    assert_close(
        &w,
        &[
            [0.443_107_6, 0.220_826_8, 0.336_065_5],
            [0.311_603_5, 0.458_017_7, 0.230_378_8],
            [0.317_028_9, 0.462_079_7, 0.220_891_4],
        ],
    );
}

#[test]
fn per_teacher_temperatures_match_golden_values() {
    let c = cfg("teacher_temperatures = [4.0, 2.0, 3.0]");
    check(CombinationRule::Mean, &c, 0.705_457_8, 0.788_220_6);
    check(CombinationRule::Confidence, &c, 0.556_816_6, 0.654_443_5);
}

#[test]
fn adaptive_weights_sum_to_one_per_example() {
    let (_, ts, y) = tensors();
    for rule in [CombinationRule::Confidence, CombinationRule::Entropy] {
        for row in rule.weights(&ts, &y).unwrap().to_vec2::<f32>().unwrap() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{rule:?}: {row:?}");
            assert!(row.iter().all(|w| *w >= 0.0));
        }
    }
}

/// `weighted` with a one-hot weight is single-teacher vanilla KD, bit for bit: same loss
/// terms and same student gradient.
#[test]
fn one_hot_weights_equal_vanilla_kd_exactly() {
    let dev = Device::Cpu;
    let (_, ts, y) = tensors();
    for k in 0..3 {
        let mut w = vec![0.0; 3];
        w[k] = 1.0;
        let c = MultiTeacherConfig { weights: Some(w.clone()), ..cfg("") };
        let multi = MultiTeacherLoss::new(CombinationRule::Weighted(w), &c, 3);
        let vanilla = SoftTargetLoss { temperature: 4.0, alpha: 0.9, label_smoothing: 0.0 };

        let s1 = Var::new(&S, &dev).unwrap();
        let m = multi.compute(s1.as_tensor(), &ts, &y).unwrap();
        let g1 = m.total.backward().unwrap().get(s1.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let s2 = Var::new(&S, &dev).unwrap();
        let v = vanilla.compute(s2.as_tensor(), &ts[k], &y).unwrap();
        let g2 = v.total.backward().unwrap().get(s2.as_tensor()).unwrap().to_vec2::<f32>().unwrap();

        assert_eq!(scalar(&m.total).to_bits(), scalar(&v.total).to_bits(), "teacher {k}");
        assert_eq!(scalar(&m.kd).to_bits(), scalar(&v.kd).to_bits(), "teacher {k}");
        assert_eq!(g1, g2, "teacher {k}");
    }
}

#[test]
fn teachers_get_no_gradient() {
    let dev = Device::Cpu;
    let s = Var::new(&S, &dev).unwrap();
    let tv: Vec<Var> = TS.iter().map(|t| Var::new(t, &dev).unwrap()).collect();
    let ts: Vec<Tensor> = tv.iter().map(|v| v.as_tensor().clone()).collect();
    let y = Tensor::new(&Y, &dev).unwrap();
    for rule in [CombinationRule::Mean, CombinationRule::Confidence, CombinationRule::Entropy] {
        let l = MultiTeacherLoss::new(rule, &cfg(""), 3).compute(s.as_tensor(), &ts, &y).unwrap();
        let grads = l.total.backward().unwrap();
        assert!(grads.get(s.as_tensor()).is_some());
        assert!(tv.iter().all(|v| grads.get(v.as_tensor()).is_none()));
    }
}

#[test]
fn config_errors_name_the_problem() {
    let err = |extra: &str, n: usize| {
        let t: toml::Table = toml::from_str(&format!("temperature = 4.0\nalpha = 0.9\n{extra}")).unwrap();
        MultiTeacherConfig::from_table(&t, &names(n)).unwrap_err().to_string()
    };
    assert!(err("weights = [0.5, 0.5]", 3).contains("2 values for 3 teachers"));
    assert!(err("weights = [0.5, 0.7, -0.2]", 3).contains("non-negative"));
    assert!(err("weights = [0.5, 0.4, 0.2]", 3).contains("sum to 1"));
    assert!(err("teacher_temperatures = [1.0]", 2).contains("teacher_temperatures has 1"));
    assert!(err("single_teacher = \"resnet110\"", 2).contains("resnet110"));
    assert!(err("wieghts = [1.0]", 1).contains("wieghts"));
    assert!(err("", 0).contains("at least one teacher"));
    let c = cfg("");
    assert!(CombinationRule::for_variant("weighted", &c).unwrap_err().to_string().contains("weights"));
}

struct Fixed {
    arch: &'static str,
    classes: usize,
}

impl Classifier for Fixed {
    fn forward(&self, input: &Tensor, _mode: Mode) -> Result<ModelOutput> {
        let logits = Tensor::zeros((input.dim(0)?, self.classes), DType::F32, input.device())?;
        Ok(ModelOutput { embedding: logits.clone(), logits, stage_features: vec![] })
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn arch(&self) -> &str {
        self.arch
    }
    fn num_params(&self) -> usize {
        0
    }
}

#[test]
fn teachers_with_another_label_space_are_refused_by_name() {
    let student = Fixed { arch: "resnet8", classes: 10 };
    let a = Fixed { arch: "resnet56", classes: 10 };
    let b = Fixed { arch: "resnet32x4", classes: 100 };
    let teachers: Vec<&dyn Classifier> = vec![&a, &b];
    let e = check_label_space(&student, teachers.into_iter()).unwrap_err().to_string();
    assert!(e.contains("resnet32x4: 100 classes") && e.contains("resnet56: 10 classes"), "{e}");
    assert!(e.contains("resnet8") && e.contains("10 classes"), "{e}");
}
