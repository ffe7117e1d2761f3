//! LR schedules against torch's closed forms, value schedules' end points and recipe syntax.

use kd_core::method::StepContext;
use kd_core::schedule::{LrSchedule, ValueSchedule};
use serde::Deserialize;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12 * b.abs().max(1.0)
}

#[derive(Debug, Deserialize)]
struct Train {
    lr_schedule: LrSchedule,
}

fn lr_schedule(text: &str) -> Result<LrSchedule, String> {
    toml::from_str::<Train>(&format!("lr_schedule = {text}"))
        .map(|t| t.lr_schedule)
        .map_err(|e| e.to_string())
}

#[test]
fn multistep_matches_torch_multisteplr_per_epoch() {
    // torch: MultiStepLR(opt, [150, 180, 210], 0.1) stepped after each epoch.
    let s = lr_schedule("{ kind = \"multistep\", milestones = [150, 180, 210], gamma = 0.1 }").unwrap();
    let lr = |epoch, step| s.lr_at(0.05, epoch, step, 100, 240);
    assert_eq!(lr(0, 0), 0.05);
    assert_eq!(lr(149, 99), 0.05, "constant within an epoch");
    assert!(close(lr(150, 0), 0.005));
    assert!(close(lr(179, 50), 0.005));
    assert!(close(lr(180, 0), 0.0005));
    assert!(close(lr(239, 99), 0.00005));
    // A milestone given twice counts twice, as in torch's Counter.
    let twice = LrSchedule::Multistep { milestones: vec![2, 2], gamma: 0.5, warmup_epochs: 0.0 };
    assert!(close(twice.lr_at(1.0, 2, 0, 10, 5), 0.25));
}

#[test]
fn cosine_per_step_and_per_epoch_follow_the_closed_form() {
    // eta_t = min + (base - min)(1 + cos(pi t / T)) / 2
    let c = lr_schedule("{ kind = \"cosine\", min_lr = 0.001 }").unwrap();
    let closed = |t: f64, total: f64| 0.001 + 0.099 * 0.5 * (1.0 + (std::f64::consts::PI * t / total).cos());
    assert_eq!(c.lr_at(0.1, 0, 0, 10, 5), 0.1);
    assert!(close(c.lr_at(0.1, 2, 5, 10, 5), closed(25.0, 50.0)), "midpoint");
    assert!(close(c.lr_at(0.1, 3, 7, 10, 5), closed(37.0, 50.0)));
    assert!(close(c.lr_at(0.1, 5, 0, 10, 5), 0.001), "ends at min_lr");
    let e = lr_schedule("{ kind = \"cosine-per-epoch\", min_lr = 0.001 }").unwrap();
    assert!(close(e.lr_at(0.1, 3, 0, 10, 5), closed(3.0, 5.0)));
    assert_eq!(e.lr_at(0.1, 3, 0, 10, 5), e.lr_at(0.1, 3, 9, 10, 5), "constant within an epoch");
    assert_eq!(e.lr_at(0.1, 0, 4, 10, 5), 0.1);
}

#[test]
fn warmup_is_linear_per_step_then_hands_over() {
    // 1.5 epochs of 4 steps = 6 warm-up steps: base·(s+1)/6.
    let s =
        lr_schedule("{ kind = \"multistep\", milestones = [3], gamma = 0.1, warmup_epochs = 1.5 }").unwrap();
    let lr = |epoch, step| s.lr_at(0.6, epoch, step, 4, 5);
    for (epoch, step, want) in [(0, 0, 0.1), (0, 3, 0.4), (1, 0, 0.5), (1, 1, 0.6), (1, 2, 0.6), (3, 0, 0.06)]
    {
        assert!(close(lr(epoch, step), want), "epoch {epoch} step {step}: {} vs {want}", lr(epoch, step));
    }
    // Cosine after a 1-epoch warm-up starts at base and ends at min_lr.
    let c = LrSchedule::Cosine { min_lr: 0.0, warmup_epochs: 1.0 };
    assert!(close(c.lr_at(1.0, 1, 0, 10, 3), 1.0));
    assert!(close(c.lr_at(1.0, 2, 0, 10, 3), 0.5));
    assert!(c.lr_at(1.0, 3, 0, 10, 3).abs() < 1e-12);
}

#[test]
fn linear_decay_matches_hugging_face_after_warmup() {
    // get_linear_schedule_with_warmup: base · (T - s) / (T - W) for s ≥ W, T = 30, W = 10.
    let l = lr_schedule("{ kind = \"linear\", warmup_epochs = 1 }").unwrap();
    assert!(close(l.lr_at(1.0, 0, 9, 10, 3), 1.0), "warm-up reaches base");
    assert!(close(l.lr_at(1.0, 0, 0, 10, 3), 0.1), "warm-up starts at base/steps");
    for s in [10usize, 17, 25, 29] {
        let want = (30 - s) as f64 / 20.0;
        assert!(close(l.lr_at(1.0, s / 10, s % 10, 10, 3), want), "step {s}");
    }
    assert!(l.lr_at(1.0, 3, 0, 10, 3).abs() < 1e-12);
    assert_eq!(lr_schedule("{ kind = \"constant\" }").unwrap().lr_at(0.3, 7, 3, 10, 3), 0.3);
}

#[test]
fn lr_schedule_syntax_errors_name_the_problem() {
    let e = lr_schedule("{ kind = \"multistep\", milestones = [1], gamma = 0.1, gama = 2 }").unwrap_err();
    assert!(e.contains("gama"), "{e}");
    let e = lr_schedule("{ kind = \"exponential\" }").unwrap_err();
    assert!(e.contains("exponential"), "{e}");
    assert!(lr_schedule("{ kind = \"multistep\", milestones = [1], gamma = 0 }")
        .unwrap()
        .validate()
        .is_err());
    let e = LrSchedule::Constant { warmup_epochs: -1.0 }.validate().unwrap_err();
    assert!(e.contains("warmup_epochs"), "{e}");
    assert!(LrSchedule::Cosine { min_lr: 0.0, warmup_epochs: 2.5 }.validate().is_ok());
}

#[derive(Debug, Deserialize)]
struct Distill {
    t: ValueSchedule,
}

fn value(text: &str) -> Result<ValueSchedule, String> {
    toml::from_str::<Distill>(&format!("t = {text}")).map(|d| d.t).map_err(|e| e.to_string())
}

#[test]
fn value_schedules_parse_and_hit_their_end_points() {
    assert_eq!(value("4.0").unwrap(), ValueSchedule::Constant(4.0));
    assert_eq!(value("4").unwrap().at(0.3), 4.0, "an integer is a constant too");
    let l = value("{ kind = \"linear\", start = 1, end = 4 }").unwrap();
    assert_eq!((l.at(0.0), l.at(0.5), l.at(1.0)), (1.0, 2.5, 4.0));
    assert_eq!((l.at(-1.0), l.at(2.0)), (1.0, 4.0), "progress is clamped");
    let c = value("{ kind = \"cosine\", start = 8.0, end = 2.0 }").unwrap();
    assert!(close(c.at(0.0), 8.0) && close(c.at(1.0), 2.0) && close(c.at(0.5), 5.0));
    assert!(c.at(0.25) > 5.0 && c.at(0.75) < 5.0);
    let s = value("{ kind = \"step\", values = [1.0, 2.0, 3.0], boundaries = [0.5, 0.75] }").unwrap();
    assert_eq!((s.at(0.0), s.at(0.49), s.at(0.5), s.at(0.8), s.at(1.0)), (1.0, 1.0, 2.0, 3.0, 3.0));

    // Progress from a step context: epoch 1 of 2, step 5 of 10 → 0.75.
    let ctx = StepContext { epoch: 1, epochs: 2, step_in_epoch: 5, steps_per_epoch: 10 };
    assert_eq!(l.at_step(&ctx), 1.0 + 3.0 * 0.75);
}

#[test]
fn value_schedules_reject_bad_tables_and_serialise_back() {
    let e = value("{ kind = \"linear\", start = 1 }").unwrap_err();
    assert!(e.contains("end"), "{e}");
    let e = value("{ kind = \"linear\", start = 1, end = 2, stop = 3 }").unwrap_err();
    assert!(e.contains("stop"), "{e}");
    let e = value("{ kind = \"step\", values = [1.0, 2.0], boundaries = [0.2, 0.4] }").unwrap_err();
    assert!(e.contains("one more value"), "{e}");
    let e = value("{ kind = \"step\", values = [1.0, 2.0, 3.0], boundaries = [0.6, 0.4] }").unwrap_err();
    assert!(e.contains("ascending"), "{e}");
    assert!(value("\"four\"").is_err());

    for s in [
        ValueSchedule::Constant(4.0),
        ValueSchedule::Linear { start: 1.0, end: 4.0 },
        ValueSchedule::Step { values: vec![1.0, 0.5], boundaries: vec![0.5] },
    ] {
        let json = serde_json::to_string(&s).unwrap();
        let back: ValueSchedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s, "{json}");
    }
    assert_eq!(serde_json::to_string(&ValueSchedule::Constant(4.0)).unwrap(), "4.0");
    assert_eq!(
        serde_json::to_string(&ValueSchedule::Cosine { start: 1.0, end: 0.0 }).unwrap(),
        r#"{"kind":"cosine","start":1.0,"end":0.0}"#
    );
}
