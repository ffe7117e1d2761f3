use super::*;
use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use kd_models::small_cnn::{AudioCnn, AudioCnnConfig, LeNet, LeNetConfig};

const LAYOUT: PackedLayout = PackedLayout { a: [1, 28, 28], b: [1, 8, 12] };

fn distill_table() -> String {
    r#"
temperature = 4.0
alpha = 0.9
feature_weight = 1.0
feature_loss = "cosine"
[audio]
hub = "Jakobovski/free-spoken-digit-dataset"
train_split = "train"
eval_split = "test"
audio_column = "audio"
label_column = "label"
sample_rate = 8000
n_fft = 256
hop = 128
n_mels = 8
frames = 12
[pairing]
seed = 0
"#
    .to_string()
}

fn cfg() -> CrossModalConfig {
    CrossModalConfig::from_table(&toml::from_str(&distill_table()).unwrap()).unwrap()
}

#[test]
fn feature_distances_match_golden_values() {
    // Pure Python:
    //   p=[[1,2,0],[0.5,-1,2]]; t=[[2,1,1],[0,1,3]]
    //   cos=lambda a,b: sum(x*y for x,y in zip(a,b))/(sqrt(sum(x*x for x in a))*sqrt(sum(y*y for y in b))+1e-8)
    //   sum(1-cos(a,b) for a,b in zip(p,t))/2            -> 0.2898188498
    //   sum((x-y)**2 for rows for x,y in zip(a,b))/6      -> 1.375
    let dev = Device::Cpu;
    let p = Tensor::new(&[[1f32, 2., 0.], [0.5, -1., 2.]], &dev).unwrap();
    let t = Tensor::new(&[[2f32, 1., 1.], [0., 1., 3.]], &dev).unwrap();
    let cos = feature_distance(FeatureLoss::Cosine, &p, &t).unwrap().to_scalar::<f32>().unwrap();
    assert!((cos - 0.289_818_85).abs() < 1e-6, "{cos}");
    let mse = feature_distance(FeatureLoss::Mse, &p, &t).unwrap().to_scalar::<f32>().unwrap();
    assert!((mse - 1.375).abs() < 1e-6, "{mse}");
    // The teacher side is a constant.
    let tv = Var::new(&[[2f32, 1., 1.], [0., 1., 3.]], &dev).unwrap();
    let pv = Var::new(&[[1f32, 2., 0.], [0.5, -1., 2.]], &dev).unwrap();
    let g = feature_distance(FeatureLoss::Mse, pv.as_tensor(), tv.as_tensor()).unwrap().backward().unwrap();
    assert!(g.get(tv.as_tensor()).is_none() && g.get(pv.as_tensor()).is_some());
}

#[test]
fn packed_layout_splits_rows_into_the_two_modalities() {
    let l = PackedLayout { a: [1, 2, 2], b: [1, 1, 3] };
    let mut rows = Vec::new();
    l.pack(&[1., 2., 3., 4.], &[5., 6., 7.], &mut rows);
    l.pack(&[10., 20., 30., 40.], &[50., 60., 70.], &mut rows);
    let x = Tensor::from_vec(rows, (2, 7), &Device::Cpu).unwrap();
    let a = l.modality_a(&x).unwrap();
    let b = l.modality_b(&x).unwrap();
    assert_eq!(a.dims(), &[2, 1, 2, 2]);
    assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5., 6., 7., 50., 60., 70.]);
    assert_eq!(a.flatten_from(1).unwrap().to_vec2::<f32>().unwrap()[1], vec![10., 20., 30., 40.]);
    let wrong = Tensor::zeros((2, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(l.modality_a(&wrong).unwrap_err().to_string().contains("needs 7"));
}

fn models(seed: u64) -> (VarMap, Arc<LeNet>, Arc<AudioCnn>) {
    let vm = VarMap::new();
    let vb = kd_models::seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
    let t = Arc::new(LeNet::new(&LeNetConfig::mnist(10), vb.pp("teacher")).unwrap());
    let s = Arc::new(AudioCnn::new(&AudioCnnConfig::small(8, 12, 10), vb.pp("student")).unwrap());
    (vm, t, s)
}

fn batch() -> Batch {
    let x = Tensor::randn(0f32, 1., (4, LAYOUT.row_len()), &Device::Cpu).unwrap();
    Batch {
        inputs: x,
        labels: Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap(),
        example_ids: vec![0, 1, 2, 3],
        views: vec![0; 4],
        strong: None,
    }
}

fn ctx() -> StepContext {
    StepContext { epoch: 0, epochs: 1, step_in_epoch: 0, steps_per_epoch: 1 }
}

#[test]
fn kd_uses_the_teachers_logits_on_modality_a_and_the_student_on_modality_b() {
    let (_vm, t, s) = models(0);
    let b = batch();
    let mut m = CrossModal::distill(s.clone(), t.clone(), LAYOUT, &cfg(), None).unwrap();
    assert_eq!(m.variant(), "kd");
    let got = m.losses(&b, &ctx()).unwrap().total.to_scalar::<f32>().unwrap();
    // The same loss computed by hand from the two modalities.
    let tl = t.forward(&LAYOUT.modality_a(&b.inputs).unwrap(), Mode::Eval).unwrap().logits;
    let sl = s.forward(&LAYOUT.modality_b(&b.inputs).unwrap(), Mode::Train).unwrap().logits;
    let want = SoftTargetLoss { temperature: 4.0, alpha: 0.9, label_smoothing: 0.0 }
        .compute(&sl, &tl, &b.labels)
        .unwrap()
        .total
        .to_scalar::<f32>()
        .unwrap();
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Evaluation sees only the student's modality: changing modality A changes nothing.
    let l1 = m.eval_logits(&b.inputs).unwrap()[0].to_vec2::<f32>().unwrap();
    let a_zeroed = Tensor::cat(
        &[
            Tensor::zeros((4, LAYOUT.a_len()), DType::F32, &Device::Cpu).unwrap(),
            b.inputs.narrow(1, LAYOUT.a_len(), LAYOUT.b_len()).unwrap(),
        ],
        1,
    )
    .unwrap();
    assert_eq!(l1, m.eval_logits(&a_zeroed).unwrap()[0].to_vec2::<f32>().unwrap());
}

#[test]
fn kd_feat_adds_the_weighted_alignment_term_and_trains_the_projection() {
    let (vm, t, s) = models(1);
    let vb = kd_models::seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
    let align =
        FeatureAlignment::new(s.embedding_dim(), 128, FeatureLoss::Cosine, 0.5, vb.pp("projection")).unwrap();
    let mut m = CrossModal::distill(s, t, LAYOUT, &cfg(), Some(align)).unwrap();
    assert_eq!(m.variant(), "kd-feat");
    let l = m.losses(&batch(), &ctx()).unwrap();
    let part = |n: &str| l.parts.iter().find(|(k, _)| k == n).unwrap().1.to_scalar::<f32>().unwrap();
    let total = l.total.to_scalar::<f32>().unwrap();
    let want = 0.1 * part("ce") + 0.9 * part("kd") + 0.5 * part("feat");
    assert!((total - want).abs() < 1e-4, "{total} vs {want}");
    assert!(part("feat") > 0.0 && part("feat") <= 2.0);
    let grads = l.total.backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert!(grads.get(data["projection.weight"].as_tensor()).is_some());
    assert!(grads.get(data["teacher.fc.weight"].as_tensor()).is_none(), "the teacher is frozen");
}

#[test]
fn fusion_sees_both_modalities() {
    let (vm, t, s) = models(2);
    let vb = kd_models::seeded_var_builder(&vm, 2, DType::F32, &Device::Cpu);
    let f = Arc::new(
        LateFusion::new(t, 128, s.clone(), s.embedding_dim(), LAYOUT, vb.pp("fusion_head")).unwrap(),
    );
    assert_eq!(f.arch(), "lenet+audio-cnn");
    let m = CrossModal::fusion(f, LAYOUT);
    let b = batch();
    let l1 = m.eval_logits(&b.inputs).unwrap()[0].to_vec2::<f32>().unwrap();
    let changed = (&b.inputs * 2.0).unwrap();
    assert_ne!(l1, m.eval_logits(&changed).unwrap()[0].to_vec2::<f32>().unwrap());
    assert_eq!(m.eval_entries()[0].role, "student");
}

#[test]
fn config_rejects_unknown_keys_bad_values_and_variants() {
    let mut t: toml::Table = toml::from_str(&distill_table()).unwrap();
    t.insert("temprature".into(), toml::Value::Float(2.0));
    let e = CrossModalConfig::from_table(&t).unwrap_err().to_string();
    assert!(e.contains("temprature"), "{e}");
    let mut t: toml::Table = toml::from_str(&distill_table()).unwrap();
    t["audio"].as_table_mut().unwrap().insert("n_fftt".into(), toml::Value::Integer(3));
    assert!(CrossModalConfig::from_table(&t).unwrap_err().to_string().contains("n_fftt"));
    let mut t: toml::Table = toml::from_str(&distill_table()).unwrap();
    t.insert("alpha".into(), toml::Value::Float(1.5));
    assert!(CrossModalConfig::from_table(&t).unwrap_err().to_string().contains("alpha"));
    let c = cfg();
    assert!(c.check_variants(&["plain".into(), "kd".into(), "kd-feat".into(), "fusion".into()]).is_ok());
    assert!(c.check_variants(&["dml".into()]).unwrap_err().to_string().contains("kd-feat"));
    let no_feat = CrossModalConfig { feature_weight: 0.0, ..c };
    assert!(no_feat.check_variants(&["kd-feat".into()]).unwrap_err().to_string().contains("feature_weight"));
    assert_eq!(cfg().f_max(), 4000.0);
}

#[test]
fn different_label_spaces_are_refused() {
    let vm = VarMap::new();
    let vb = kd_models::seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
    let t = Arc::new(LeNet::new(&LeNetConfig::mnist(5), vb.pp("t")).unwrap());
    let s = Arc::new(AudioCnn::new(&AudioCnnConfig::small(8, 12, 10), vb.pp("s")).unwrap());
    let e = CrossModal::distill(s, t, LAYOUT, &cfg(), None).err().unwrap().to_string();
    assert!(e.contains("5 classes") && e.contains("10"), "{e}");
}
