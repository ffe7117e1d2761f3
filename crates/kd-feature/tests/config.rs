//! Configs: reference defaults from an empty table, unknown keys and bad values refused by name,
//! shapes that cannot fit refused at construction.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use kd_core::ModelOutput;
use kd_feature::*;

fn table(src: &str) -> toml::Table {
    src.parse().unwrap()
}

fn shapes(stages: &[(usize, usize, usize)], embedding: usize) -> FeatureShapes {
    FeatureShapes { stages: stages.iter().map(|&(c, h, w)| StageShape::new(c, h, w)).collect(), embedding }
}

/// The shapes of a CIFAR ResNet-20/56 at 32x32.
fn resnet() -> FeatureShapes {
    shapes(&[(16, 32, 32), (32, 16, 16), (64, 8, 8)], 64)
}

fn message<T: std::fmt::Debug>(r: Result<T, FeatureError>) -> String {
    r.expect_err("should be refused").to_string()
}

#[test]
fn empty_tables_give_repdistillers_defaults() {
    let empty = toml::Table::new();
    assert_eq!(FitNetConfig::from_table(&empty).unwrap(), FitNetConfig { beta: 100.0, hint_stage: 1 });
    assert_eq!(AttentionConfig::from_table(&empty).unwrap(), AttentionConfig { beta: 1000.0, p: 2 });
    assert_eq!(SimilarityConfig::from_table(&empty).unwrap().beta, 3000.0);
    assert_eq!(
        CorrelationConfig::from_table(&empty).unwrap(),
        CorrelationConfig { beta: 0.02, feat_dim: 128 }
    );
    assert_eq!(
        VidConfig::from_table(&empty).unwrap(),
        VidConfig { beta: 1.0, init_pred_var: 5.0, eps: 1e-5 }
    );
    assert_eq!(
        RkdConfig::from_table(&empty).unwrap(),
        RkdConfig { beta: 1.0, distance_weight: 25.0, angle_weight: 50.0 }
    );
    assert_eq!(PktConfig::from_table(&empty).unwrap().beta, 30000.0);
    assert_eq!(NstConfig::from_table(&empty).unwrap().beta, 50.0);
}

#[test]
fn a_set_key_overrides_its_default_only() {
    let cfg = FitNetConfig::from_table(&table("hint_stage = 2")).unwrap();
    assert_eq!(cfg, FitNetConfig { beta: 100.0, hint_stage: 2 });
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let m = message(FitNetConfig::from_table(&table("hint_layer = 2")));
    assert!(m.contains("fitnet") && m.contains("hint_layer"), "{m}");
    let m = message(RkdConfig::from_table(&table("squared = true")));
    assert!(m.contains("rkd") && m.contains("squared"), "{m}");
}

#[test]
fn bad_values_are_refused_by_name() {
    let m = message(AttentionConfig::from_table(&table("beta = -1.0")));
    assert!(m.contains("`beta`") && m.contains("-1"), "{m}");
    let m = message(RkdConfig::from_table(&table("angle_weight = -50.0")));
    assert!(m.contains("`angle_weight`"), "{m}");
    let m = message(PktConfig::from_table(&table("beta = nan")));
    assert!(m.contains("`beta`"), "{m}");
    let m = message(AttentionConfig::from_table(&table("p = 0")));
    assert!(m.contains("`p`"), "{m}");
    let m = message(CorrelationConfig::from_table(&table("feat_dim = 0")));
    assert!(m.contains("`feat_dim`"), "{m}");
    let m = message(VidConfig::from_table(&table("init_pred_var = 1e-6")));
    assert!(m.contains("`init_pred_var`"), "{m}");
    let m = message(VidConfig::from_table(&table("eps = 0.0")));
    assert!(m.contains("`eps`"), "{m}");
    let m = message(SimilarityConfig::from_table(&table("beta = \"high\"")));
    assert!(m.contains("sp"), "{m}");
}

#[test]
fn a_hint_stage_the_student_lacks_is_refused() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cfg = FitNetConfig { hint_stage: 3, ..Default::default() };
    let m = message(FitNet::new(&cfg, &resnet(), &resnet(), vb));
    assert!(m.contains("hint_stage = 3") && m.contains("3 stages"), "{m}");
}

#[test]
fn a_hint_no_convreg_can_map_is_refused() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    // Student 4x4 onto teacher 16x16: neither stride-2 case nor a shrinking conv.
    let student = shapes(&[(16, 4, 4)], 16);
    let teacher = shapes(&[(32, 16, 16)], 32);
    let m =
        message(FitNet::new(&FitNetConfig { hint_stage: 0, ..Default::default() }, &student, &teacher, vb));
    assert!(m.contains("ConvReg") && m.contains("(16, 4, 4)") && m.contains("(32, 16, 16)"), "{m}");
}

#[test]
fn stagewise_methods_refuse_different_stage_counts() {
    let teacher = shapes(&[(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)], 128);
    let m = message(Attention::new(&AttentionConfig::default(), &resnet(), &teacher));
    assert!(m.contains("3 stages") && m.contains("teacher 4"), "{m}");
    assert!(NeuronSelectivity::new(&NstConfig::default(), &resnet(), &teacher).is_err());
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    assert!(Vid::new(&VidConfig::default(), &resnet(), &teacher, vb).is_err());
}

#[test]
fn taps_follow_repdistillers_feature_choice() {
    let (s, t) = (resnet(), resnet());
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let fitnet = FitNet::new(&FitNetConfig::default(), &s, &t, vb.pp("fitnet")).unwrap();
    assert_eq!(fitnet.taps(), Taps { stages: vec![1], embedding: false });
    let all = Taps { stages: vec![0, 1, 2], embedding: false };
    assert_eq!(Attention::new(&AttentionConfig::default(), &s, &t).unwrap().taps(), all);
    assert_eq!(NeuronSelectivity::new(&NstConfig::default(), &s, &t).unwrap().taps(), all);
    assert_eq!(Vid::new(&VidConfig::default(), &s, &t, vb.pp("vid")).unwrap().taps(), all);
    assert_eq!(Similarity::new(&SimilarityConfig::default(), &s, &t).unwrap().taps().stages, vec![2]);
    let embedding = Taps { stages: vec![], embedding: true };
    assert_eq!(Rkd::new(&RkdConfig::default(), &s, &t).unwrap().taps(), embedding);
    assert_eq!(Pkt::new(&PktConfig::default(), &s, &t).unwrap().taps(), embedding);
    assert_eq!(
        Correlation::new(&CorrelationConfig::default(), &s, &t, vb.pp("cc")).unwrap().taps(),
        embedding
    );
}

#[test]
fn shapes_are_read_off_a_forward_pass_and_non_maps_refused() {
    let z = |d: &[usize]| Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    let out =
        ModelOutput { logits: z(&[2, 10]), stage_features: vec![z(&[2, 16, 8, 8])], embedding: z(&[2, 16]) };
    assert_eq!(FeatureShapes::of(&out).unwrap(), shapes(&[(16, 8, 8)], 16));
    let tokens =
        ModelOutput { logits: z(&[2, 10]), stage_features: vec![z(&[2, 7, 16])], embedding: z(&[2, 16]) };
    let m = message(FeatureShapes::of(&tokens));
    assert!(m.contains("(batch, C, H, W)"), "{m}");
}
