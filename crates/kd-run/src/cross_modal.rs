//! `kd reproduce` for `experiment.method = "cross-modal"` (kd-cross-modal): an image teacher
//! teaches an audio student over label-paired digits (AV-MNIST style).
//!
//! Data: modality A is the recipe's `[data]` image dataset (MNIST: `1×28×28`, grey, normalised
//! with `data.normalize`'s first channel); modality B is `[distill.audio]` (FSDD WAV clips →
//! log-mel spectrograms `1×n_mels×frames`, standardised by the mean and standard deviation of
//! all training-split feature values). `[distill.pairing]` pairs them by label within each
//! source's own split (kd_data::paired: no test item pairs into training). A batch's `inputs`
//! is the packed row `[image | spectrogram]` (kd_cross_modal::PackedLayout).
//!
//! Teacher: `[teacher] arch = "lenet"` with either `checkpoint = { path, sha256 }` or
//! `train = { epochs, seed, ... }`; a trained teacher learns on a class-balanced subset of the
//! image training split (`data.train_limit`) and is cached under
//! `<kd cache>/cross-modal/<config hash>.safetensors`, reused by every later run.
//!
//! Rows: the teacher (role `teacher`, on the test pairs' images) with each distilled run, the
//! audio student (`plain`, `kd`, `kd-feat`) and the late-fusion model (`fusion`, role
//! `student`), all on the same test pairs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kd_core::hash::{config_hash, sha256_file, short};
use kd_core::plain::PlainTraining;
use kd_core::recipe::{Recipe, TeacherSection};
use kd_core::results::{run_rows, teacher_rows, ResultRow, TeacherScore};
use kd_core::seed::derive_seed;
use kd_core::trainer::{self, BatchSource, EvalScores, Silent, TrainReport};

use crate::record::{ExperimentFiles, RowBase, Summary};
use crate::registry::ParsedMethod;
use crate::stage_cache::CachedModel;
use crate::train::{fit, Fit};
use kd_core::registry::{BuildEnv, BuiltModel, StageSpec, TeacherInfo, TrainedStage, Trainee};
use kd_core::teacher::TeacherLogits;
use kd_core::{Batch, Classifier, Method};
use kd_cross_modal::{CrossModal, CrossModalConfig, PackedLayout};
use kd_data::{AudioSource, HubCache, LogMel, LogMelConfig, PairingSpec, SplitLabels};
use kd_models::small_cnn::{AudioCnn, AudioCnnConfig, LeNet, LeNetConfig, AUDIO_CNN_ARCH, LENET_ARCH};

use crate::env;
use crate::reproduce::{Args, Paths};

/// Rows of equally shaped f32 examples with labels, batched for the trainer.
#[derive(Clone)]
pub struct FeatureRows {
    pub data: Arc<Vec<f32>>,
    /// Shape of one row (e.g. `[1, 28, 28]`, or `[row_len]` for packed pairs).
    pub shape: Vec<usize>,
    pub labels: Arc<Vec<u32>>,
}

impl FeatureRows {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn row_len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Deterministic batches over [`FeatureRows`]: epoch `e`'s order depends only on `(seed, e)`.
pub struct FeatureLoader {
    pub rows: FeatureRows,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub device: Device,
}

impl BatchSource for FeatureLoader {
    fn steps(&self) -> usize {
        let n = self.rows.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn examples(&self) -> usize {
        if self.drop_last {
            self.steps() * self.batch_size
        } else {
            self.rows.len()
        }
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = kd_core::Result<Batch>> + '_> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        if self.shuffle {
            shuffle(&mut order, derive_seed(self.seed, &format!("epoch/{epoch}")));
        }
        let steps = self.steps();
        let b = self.batch_size;
        Box::new((0..steps).map(move |s| {
            let idx = &order[s * b..((s + 1) * b).min(order.len())];
            let n = self.rows.row_len();
            let mut data = Vec::with_capacity(idx.len() * n);
            for &i in idx {
                data.extend_from_slice(&self.rows.data[i * n..(i + 1) * n]);
            }
            let mut shape = vec![idx.len()];
            shape.extend(&self.rows.shape);
            let labels: Vec<u32> = idx.iter().map(|&i| self.rows.labels[i]).collect();
            Ok(Batch {
                inputs: Tensor::from_vec(data, shape, &self.device)?,
                labels: Tensor::from_vec(labels, idx.len(), &self.device)?,
                example_ids: idx.iter().map(|&i| i as u32).collect(),
                views: vec![0; idx.len()],
                strong: None,
            })
        }))
    }
}

/// Fisher–Yates shuffle driven by SplitMix64 from `seed` (kd-cli has no `rand` dependency).
fn shuffle(v: &mut [usize], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The image of example `i` as one normalised grey channel (the first of the decoded RGB).
fn grey_image(ds: &kd_data::ImageDataset, i: usize, mean: f32, std: f32) -> Vec<f32> {
    let n = ds.height * ds.width;
    let px = &ds.pixels[i * n * 3..(i + 1) * n * 3];
    (0..n).map(|k| (px[k * 3] as f32 / 255.0 - mean) / std).collect()
}

/// Everything the runs of one configuration share.
struct Prepared {
    layout: PackedLayout,
    train_pairs: FeatureRows,
    test_pairs: FeatureRows,
    /// Image-only training rows for the teacher.
    teacher_train: FeatureRows,
    dataset: String,
    revision: String,
}

fn prepare(recipe: &Recipe, cfg: &CrossModalConfig) -> Result<Prepared> {
    let d = &recipe.data;
    let hub = HubCache::from_env();
    let t0 = Instant::now();
    let img_train = crate::data::load_split(&hub, d, &d.train_split, None)?;
    let img_test = crate::data::load_split(&hub, d, &d.eval_split, None)?;
    let (mi, si) = (d.normalize.mean[0], d.normalize.std[0]);
    let a = &cfg.audio;
    let features = LogMel::new(LogMelConfig {
        sample_rate: a.sample_rate,
        n_fft: a.n_fft,
        hop: a.hop,
        n_mels: a.n_mels,
        f_min: a.f_min,
        f_max: cfg.f_max(),
        frames: a.frames,
        log_offset: a.log_offset,
    })
    .context("[distill.audio]")?;
    let src = AudioSource {
        repo: a.hub.clone(),
        revision: a.revision.clone(),
        config: a.config.clone(),
        audio_column: a.audio_column.clone(),
        label_column: a.label_column.clone(),
    };
    let au_train = kd_data::load_audio_split(&hub, &src, &a.train_split, &features)
        .with_context(|| format!("loading {} split `{}`", a.hub, a.train_split))?;
    let au_test = kd_data::load_audio_split(&hub, &src, &a.eval_split, &features)
        .with_context(|| format!("loading {} split `{}`", a.hub, a.eval_split))?;
    for (name, labels) in [(&a.hub, &au_train.labels), (&a.hub, &au_test.labels)] {
        if let Some(&m) = labels.iter().max() {
            if m as usize >= d.num_classes {
                bail!("{name} has label {m}, but data.num_classes = {}", d.num_classes);
            }
        }
    }
    // Standardise the spectrograms with the training split's statistics.
    let n = au_train.features.len() as f64;
    let mean = au_train.features.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = au_train.features.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let (mean, std) = (mean as f32, (var.sqrt() as f32).max(1e-6));
    let norm = |v: &[f32]| v.iter().map(|&x| (x - mean) / std).collect::<Vec<f32>>();

    let (img_train_ds, img_test_ds) = (&img_train.dataset, &img_test.dataset);
    let spec = PairingSpec {
        train_per_class: cfg.pairing.train_per_class,
        test_per_class: cfg.pairing.eval_per_class,
        seed: cfg.pairing.seed,
    };
    let pairs = kd_data::pair_by_label(
        SplitLabels { name: &d.hub, train: &img_train_ds.labels, test: &img_test_ds.labels },
        SplitLabels { name: &a.hub, train: &au_train.labels, test: &au_test.labels },
        &spec,
    )?;
    let layout = PackedLayout { a: [1, img_train_ds.height, img_train_ds.width], b: [1, a.n_mels, a.frames] };
    let pack = |pairs: &[kd_data::Pair], img: &kd_data::ImageDataset, au: &kd_data::AudioDataset| {
        let mut data = Vec::with_capacity(pairs.len() * layout.row_len());
        for p in pairs {
            layout.pack(&grey_image(img, p.a, mi, si), &norm(au.feature(p.b)), &mut data);
        }
        FeatureRows {
            data: Arc::new(data),
            shape: vec![layout.row_len()],
            labels: Arc::new(pairs.iter().map(|p| p.label).collect()),
        }
    };
    let train_pairs = pack(&pairs.train, img_train_ds, &au_train);
    let test_pairs = pack(&pairs.test, img_test_ds, &au_test);
    let subset = match d.train_limit {
        Some(k) if k < img_train_ds.labels.len() => {
            kd_data::balanced_subset(&img_train_ds.labels, k, d.subset_seed)
        }
        _ => (0..img_train_ds.labels.len()).collect(),
    };
    let mut tdata = Vec::with_capacity(subset.len() * layout.a_len());
    for &i in &subset {
        tdata.extend(grey_image(img_train_ds, i, mi, si));
    }
    let teacher_train = FeatureRows {
        data: Arc::new(tdata),
        shape: layout.a.to_vec(),
        labels: Arc::new(subset.iter().map(|&i| img_train_ds.labels[i]).collect()),
    };
    eprintln!(
        "data: {} @ {} ({} train / {} test images) + {} @ {} ({} / {} clips, {} cropped to {} frames); \
         {} train pairs, {} test pairs; teacher trains on {} images; {:.1}s",
        d.hub,
        short(&img_train_ds.revision),
        img_train_ds.len(),
        img_test_ds.len(),
        a.hub,
        short(&au_train.revision),
        au_train.len(),
        au_test.len(),
        au_train.cropped + au_test.cropped,
        a.frames,
        train_pairs.len(),
        test_pairs.len(),
        teacher_train.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Prepared {
        layout,
        train_pairs,
        test_pairs,
        teacher_train,
        dataset: format!("{}+{}", d.hub, a.hub),
        revision: format!("{}+{}", img_train_ds.revision, au_train.revision),
    })
}

type NamedVars = Vec<(String, Var)>;

/// A model's variables: all (sorted, for checkpoints) and the trainable subset.
fn vars_of(varmap: &VarMap) -> (NamedVars, NamedVars) {
    let state = kd_core::registry::sorted_vars(varmap);
    let trainable = state.iter().filter(|(n, _)| kd_models::is_trainable(n)).cloned().collect();
    (state, trainable)
}

/// The frozen teacher with the SHA-256 of its weights file.
struct TeacherModel {
    model: Arc<LeNet>,
    hash: String,
    scores: EvalScores,
    eval_seconds: f64,
}

impl TeacherModel {
    fn top1(&self) -> f64 {
        self.scores.get("top1").unwrap_or(f64::NAN)
    }
}

fn load_frozen_lenet(path: &Path, classes: usize, device: &Device) -> Result<Arc<LeNet>> {
    let (tensors, _) = kd_core::checkpoint::load_checkpoint(path)?;
    let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, device);
    Ok(Arc::new(
        LeNet::new(&LeNetConfig::mnist(classes), vb)
            .with_context(|| format!("teacher weights {}", path.display()))?,
    ))
}

fn teacher_config(t: &TeacherSection, recipe: &Recipe) -> serde_json::Value {
    let d = &recipe.data;
    serde_json::json!({
        "stage": "cross-modal-teacher",
        "arch": t.arch,
        "lenet": format!("{:?}", LeNetConfig::mnist(d.num_classes)),
        "train": t.train,
        "defaults": { "batch_size": recipe.train.batch_size, "optimizer": recipe.train.optimizer,
                      "lr_schedule": recipe.train.lr_schedule, "drop_last": recipe.train.drop_last },
        "data": { "hub": d.hub, "revision": d.revision, "config": d.config, "train_split": d.train_split,
                  "image_column": d.image_column, "label_column": d.label_column, "num_classes": d.num_classes,
                  "train_limit": d.train_limit, "subset_seed": d.subset_seed, "normalize": d.normalize },
    })
}

fn teacher(root: &Path, recipe: &Recipe, p: &Prepared, device: &Device) -> Result<TeacherModel> {
    let t = recipe.teacher.as_ref().context("method `cross-modal` needs a [teacher] (arch = \"lenet\")")?;
    if t.arch != LENET_ARCH {
        bail!("[teacher] arch `{}`: method `cross-modal` has an image teacher `{LENET_ARCH}` only", t.arch);
    }
    let classes = recipe.data.num_classes;
    let path = match (&t.checkpoint, &t.train) {
        // Found and verified as every pinned checkpoint (path, $KD_TEACHERS_DIR, cache, url).
        (Some(c), None) => crate::fetch::resolve_checkpoint(c, root, &env::cache_dir(root), env::offline())?,
        (None, Some(spec)) => {
            let hash = config_hash(&teacher_config(t, recipe))?;
            let cached = CachedModel::new(&env::cache_dir(root).join("cross-modal"), &hash);
            let path = cached.path.clone();
            if cached.is_cached() {
                eprintln!("teacher lenet (trained, config {}): reusing {}", short(&hash), path.display());
            } else {
                let varmap = VarMap::new();
                let vb = kd_models::seeded_var_builder(
                    &varmap,
                    derive_seed(spec.seed, "init/teacher"),
                    DType::F32,
                    device,
                );
                let net = Arc::new(LeNet::new(&LeNetConfig::mnist(classes), vb)?);
                let (state, trainable) = vars_of(&varmap);
                let opt_spec = spec.optimizer.clone().unwrap_or_else(|| recipe.train.optimizer.clone());
                let mut method = PlainTraining::new("cross-modal", net.clone(), 0.0);
                let train = FeatureLoader {
                    rows: p.teacher_train.clone(),
                    batch_size: spec.batch_size.unwrap_or(recipe.train.batch_size),
                    shuffle: true,
                    drop_last: recipe.train.drop_last,
                    seed: derive_seed(spec.seed, "teacher/data"),
                    device: device.clone(),
                };
                // Per-epoch evaluation on the test pairs' images (logged, not selected on).
                let eval = image_view(p, recipe.train.eval_batch_size, device);
                let lr_schedule =
                    spec.lr_schedule.clone().unwrap_or_else(|| recipe.train.lr_schedule.clone());
                eprintln!(
                    "teacher lenet (trained, config {}): not cached, training {} epochs on {} images",
                    short(&hash),
                    spec.epochs,
                    p.teacher_train.len()
                );
                let entries = crate::progress::as_role(method.eval_entries(), "teacher");
                cached.train(|ckpt| {
                    fit(Fit {
                        method: &mut method,
                        state: &state,
                        trainable,
                        optimizer: &opt_spec,
                        epochs: spec.epochs,
                        lr_schedule: &lr_schedule,
                        checkpoint: ckpt,
                        run_id: &format!("cross-modal-teacher/{hash}"),
                        train_data: &train,
                        eval_data: &eval,
                        label: "teacher lenet",
                        metrics: kd_core::metric::top1_top5(),
                        entries,
                    })
                    .with_context(|| format!("training the teacher (checkpoint {})", ckpt.display()))?;
                    let tensors: Vec<(String, Tensor)> =
                        state.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
                    let mut meta = BTreeMap::new();
                    meta.insert("kd.arch".to_string(), LENET_ARCH.to_string());
                    meta.insert("kd.num_classes".to_string(), classes.to_string());
                    meta.insert("kd.teacher_config_hash".to_string(), hash.clone());
                    Ok(kd_core::checkpoint::save_checkpoint(&path, &tensors, &meta)?)
                })?;
            }
            path
        }
        _ => bail!("[teacher] needs exactly one of `checkpoint` and `train`"),
    };
    let model = load_frozen_lenet(&path, classes, device)?;
    let hash = sha256_file(&path)?;
    let t0 = Instant::now();
    let eval = FeatureLoader {
        rows: p.test_pairs.clone(),
        batch_size: recipe.train.eval_batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
        device: device.clone(),
    };
    let layout = p.layout;
    let m = model.clone();
    let scores = trainer::evaluate_with(&eval, 1, &kd_core::metric::top1_top5(), &mut Silent, |x| {
        Ok(vec![m.forward(&layout.modality_a(x)?, kd_core::Mode::Eval)?.logits])
    })?;
    Ok(TeacherModel { model, hash, scores: scores[0].clone(), eval_seconds: t0.elapsed().as_secs_f64() })
}

/// The test pairs' images alone (for the teacher's per-epoch log while it trains).
fn image_view(p: &Prepared, batch_size: usize, device: &Device) -> FeatureLoader {
    let (n, a, row) = (p.test_pairs.len(), p.layout.a_len(), p.layout.row_len());
    let mut data = Vec::with_capacity(n * a);
    for i in 0..n {
        data.extend_from_slice(&p.test_pairs.data[i * row..i * row + a]);
    }
    FeatureLoader {
        rows: FeatureRows {
            data: Arc::new(data),
            shape: p.layout.a.to_vec(),
            labels: p.test_pairs.labels.clone(),
        },
        batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
        device: device.clone(),
    }
}

/// Runs every `(seed, variant)` of a cross-modal recipe; called by `kd reproduce`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    args: &Args,
    paths: &Paths,
    recipe: &Recipe,
    hash: &str,
    cfg: &CrossModalConfig,
    seeds: &[u64],
    variants: &[String],
) -> Result<()> {
    cfg.check_variants(variants)?;
    let exp = &recipe.experiment.name;
    let files = ExperimentFiles::new(paths, recipe, hash)?;
    files.adopt_old_run_folder()?;
    files.remove_dead_temporaries();
    let csv = &files.csv;
    let device = crate::env::device(&args.device)?;
    eprintln!(
        "{exp} (profile {}, config {}): image lenet → audio {} on {} + {}, variants {variants:?}, seeds {seeds:?}",
        args.profile,
        short(hash),
        recipe.student.arch,
        recipe.data.hub,
        cfg.audio.hub
    );
    if recipe.student.arch != kd_models::small_cnn::AUDIO_CNN_ARCH {
        bail!("[student] arch `{}`: method `cross-modal` trains an `audio-cnn` student", recipe.student.arch);
    }
    let existing = files.rows()?;
    let todo = crate::reproduce::runs_to_do(&existing, hash, seeds, variants, args.force, csv);
    if todo.is_empty() {
        eprintln!("nothing to do; results in {}", csv.display());
        return Ok(());
    }
    // Before any data is read: a folder that cannot be written fails now, not after training.
    files.check_writable(&crate::env::cache_dir(&paths.root))?;
    let t_start = Instant::now();
    let prepared = prepare(recipe, cfg)?;
    let needs_teacher = todo.iter().any(|(_, v)| v == "kd" || v == "kd-feat");
    let teacher = if needs_teacher { Some(teacher(&paths.root, recipe, &prepared, &device)?) } else { None };
    if let Some(t) = &teacher {
        eprintln!("teacher lenet on the test pairs' images: top-1 {:.2}", t.top1());
    }
    let methods = ParsedMethod::parse(recipe)?;
    let base = RowBase {
        recipe,
        methods: &methods,
        profile: &args.profile,
        hash,
        dataset: prepared.dataset.clone(),
        revision: prepared.revision.clone(),
        train_examples: prepared.train_pairs.len(),
        eval_examples: prepared.test_pairs.len(),
        split: recipe.data.eval_split.clone(),
        device: env::device_label(&device),
        git_commit: env::git_commit(&paths.root),
    };
    let mut summary = Summary::default();
    for (seed, variant) in &todo {
        let Some(_claim) = files.claim(variant, *seed, hash, args.force)? else {
            continue;
        };
        let ckpt = files.checkpoint(variant, *seed);
        if args.force {
            files.discard_checkpoint(variant, *seed)?;
        }
        let started_at = env::now_rfc3339();
        let (report, trainee) = train_one(
            recipe,
            cfg,
            &methods,
            &prepared,
            teacher.as_ref(),
            variant,
            *seed,
            &ckpt,
            hash,
            &device,
        )?;
        let used_teacher = teacher.as_ref().filter(|_| !trainee.teachers.is_empty());
        let teacher_hash = used_teacher.map(|t| t.hash.clone()).unwrap_or_default();
        let mut rows = run_rows(&base.row(variant, *seed, &started_at), &report, &teacher_hash);
        if let Some(t) = used_teacher {
            rows.extend(teacher_rows_of(&base, variant, *seed, &started_at, t));
        }
        let final_path = files.final_model(variant, *seed);
        files.record_run(&rows, &base.history(variant, *seed, &report), || {
            // The student (for `fusion`, the fusion model): the run's final model.
            let (_, model) = &trainee.models[0];
            let tensors: Vec<(String, Tensor)> =
                model.state.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
            let mut meta = BTreeMap::new();
            meta.insert("kd.arch".to_string(), report.entries[0].model.clone());
            meta.insert("kd.experiment".to_string(), exp.clone());
            meta.insert("kd.config_hash".to_string(), hash.to_string());
            meta.insert("kd.dataset".to_string(), prepared.dataset.clone());
            Ok(kd_core::checkpoint::save_checkpoint(&final_path, &tensors, &meta)?)
        })?;
        if let Some((last, _, _)) = report.summary(0, "top1") {
            summary.add(variant.clone(), last);
        }
        eprintln!(
            "  {variant} seed {seed}: {} rows → {} ({:.1}s)",
            rows.len(),
            csv.display(),
            report.wall_seconds()
        );
    }
    eprintln!("\n{exp}: top-1 on {} test pairs, last epoch:", prepared.test_pairs.len());
    if let Some(t) = &teacher {
        eprintln!("  teacher lenet (image)  {:.2}", t.top1());
    }
    summary.print(22, 2);
    eprintln!("rows: {}; total {:.1}s", csv.display(), t_start.elapsed().as_secs_f64());
    Ok(())
}

/// What the paired task offers a method's build ([`BuildEnv`]): the audio student, the image
/// teacher, a fresh image encoder, packed sample rows. Every model is seeded from the run
/// seed's `init` stream by variable name under the purpose's name (`init/student` →
/// `student.*`), so each variant of a seed starts its student from the same weights.
struct PairedBuildEnv<'a> {
    recipe: &'a Recipe,
    cfg: &'a CrossModalConfig,
    prepared: &'a Prepared,
    teacher: Option<&'a TeacherModel>,
    seed: u64,
    device: &'a Device,
}

impl BuildEnv for PairedBuildEnv<'_> {
    fn recipe(&self) -> &Recipe {
        self.recipe
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn device(&self) -> &Device {
        self.device
    }

    fn image_size(&self) -> Option<usize> {
        Some(self.prepared.layout.a[1])
    }

    fn model(&self, arch: &str, purpose: &str) -> kd_core::Result<BuiltModel> {
        let classes = self.recipe.data.num_classes;
        let varmap = VarMap::new();
        let vb =
            kd_models::seeded_var_builder(&varmap, derive_seed(self.seed, "init"), DType::F32, self.device);
        let vb = vb.pp(purpose.strip_prefix("init/").unwrap_or(purpose));
        let model: Arc<dyn Classifier> = match arch {
            AUDIO_CNN_ARCH => {
                let audio = &self.cfg.audio;
                let scfg = AudioCnnConfig {
                    n_mels: audio.n_mels,
                    frames: audio.frames,
                    channels: self.cfg.student_channels.clone(),
                    num_classes: classes,
                };
                Arc::new(AudioCnn::new(&scfg, vb)?)
            }
            LENET_ARCH => Arc::new(LeNet::new(&LeNetConfig::mnist(classes), vb)?),
            other => {
                return Err(kd_core::Error::Msg(format!(
                    "the paired image/audio task builds `{AUDIO_CNN_ARCH}` and `{LENET_ARCH}`, not `{other}`"
                )))
            }
        };
        Ok(BuiltModel::from_varmap(arch, classes, model, varmap, kd_models::is_trainable))
    }

    fn teachers(&self) -> Vec<TeacherInfo> {
        self.teacher
            .iter()
            .map(|t| TeacherInfo {
                arch: LENET_ARCH.to_string(),
                sha256: t.hash.clone(),
                soft_label_cache: false,
            })
            .collect()
    }

    fn sample_inputs(&self, n: usize) -> kd_core::Result<Tensor> {
        let rows = &self.prepared.test_pairs;
        let (n, len) = (n.min(rows.len()), rows.row_len());
        Ok(Tensor::from_vec(rows.data[..n * len].to_vec(), (n, len), self.device)?)
    }

    fn teacher(&self, index: usize) -> kd_core::Result<Box<dyn TeacherLogits>> {
        match (index, self.teacher) {
            (0, Some(t)) => {
                Ok(Box::new(ImageTeacher { model: t.model.clone(), layout: self.prepared.layout }))
            }
            _ => Err(kd_core::Error::Msg(format!("the paired task has no teacher {index} loaded"))),
        }
    }

    fn train_stage(
        &self,
        stage: &StageSpec,
        _make: &mut dyn FnMut(&BuiltModel) -> kd_core::Result<Box<dyn Method>>,
    ) -> kd_core::Result<TrainedStage> {
        Err(kd_core::Error::Msg(format!(
            "the paired image/audio task trains no stages (asked for `{}`)",
            stage.role
        )))
    }
}

/// The image teacher on modality A of packed rows (eval mode, detached).
struct ImageTeacher {
    model: Arc<dyn Classifier>,
    layout: PackedLayout,
}

impl TeacherLogits for ImageTeacher {
    fn logits(&mut self, batch: &Batch) -> candle_core::Result<Tensor> {
        Ok(self.model.forward(&self.layout.modality_a(&batch.inputs)?, kd_core::Mode::Eval)?.logits.detach())
    }

    fn model(&self) -> &Arc<dyn Classifier> {
        &self.model
    }
}

#[allow(clippy::too_many_arguments)]
fn train_one(
    recipe: &Recipe,
    cfg: &CrossModalConfig,
    methods: &ParsedMethod,
    p: &Prepared,
    teacher: Option<&TeacherModel>,
    variant: &str,
    seed: u64,
    ckpt: &Path,
    hash: &str,
    device: &Device,
) -> Result<(TrainReport, Trainee)> {
    let env = PairedBuildEnv { recipe, cfg, prepared: p, teacher, seed, device };
    let layout = p.layout;
    let plain = move |_: &str, student: Arc<dyn Classifier>| -> Box<dyn Method> {
        Box::new(CrossModal::plain(student, layout))
    };
    let mut trainee = methods.build(variant, &env, &plain)?;
    let (state, trainable) = trainee.variables()?;
    let train = FeatureLoader {
        rows: p.train_pairs.clone(),
        batch_size: recipe.train.batch_size,
        shuffle: true,
        drop_last: recipe.train.drop_last,
        seed: derive_seed(seed, "data"),
        device: device.clone(),
    };
    let eval = FeatureLoader {
        rows: p.test_pairs.clone(),
        batch_size: recipe.train.eval_batch_size,
        shuffle: false,
        drop_last: false,
        seed: 0,
        device: device.clone(),
    };
    let entries = trainee.method.eval_entries();
    let report = fit(Fit {
        method: trainee.method.as_mut(),
        state: &state,
        trainable,
        optimizer: &recipe.train.optimizer,
        epochs: recipe.train.epochs,
        lr_schedule: &recipe.train.lr_schedule,
        checkpoint: ckpt,
        run_id: &format!("{}/{variant}/seed{seed}/{hash}", recipe.experiment.name),
        train_data: &train,
        eval_data: &eval,
        label: &format!("{variant} s{seed}"),
        metrics: kd_core::metric::top1_top5(),
        entries,
    })
    .with_context(|| format!("training {variant} seed {seed} (checkpoint {})", ckpt.display()))?;
    Ok((report, trainee))
}

/// The image teacher's rows beside a run's.
fn teacher_rows_of(
    base: &RowBase,
    variant: &str,
    seed: u64,
    started_at: &str,
    t: &TeacherModel,
) -> Vec<ResultRow> {
    let score = TeacherScore {
        model: LENET_ARCH,
        params: t.model.num_params(),
        scores: &t.scores,
        epochs: 0,
        eval_seconds: t.eval_seconds,
        eval_examples: base.eval_examples,
        hash: &t.hash,
    };
    teacher_rows(&base.row(variant, seed, started_at), &score)
}
