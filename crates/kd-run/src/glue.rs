//! `kd reproduce` for text recipes (a `[text]` section): a GLUE task from the hub, tokenised with
//! the pretrained model repo's `tokenizer.json`; a BERT teacher fine-tuned on the task (cached by
//! config hash under `<cache>/glue-teachers/`, reused by every later run, variant and seed); small
//! students (BERT `bert-L…`, or a Kim-style text CNN `textcnn`) trained plain and distilled with
//! `kd-vanilla`, unchanged.
//!
//! Rows carry the task's official metrics (`accuracy`; `f1` + `accuracy` for MRPC/QQP; `mcc` +
//! `accuracy` for CoLA; `pearson` + `spearman` for STS-B): the task declares them and the
//! trainer records them every epoch (kd-core's `metric`). STS-B (regression) uses a 1-output
//! head, its batches' labels being the gold scores: MSE on the gold score for the teacher and
//! the plain student, `kd_vanilla::VanillaScoreKd` (MSE to the gold and to the teacher's score)
//! for KD.
//!
//! The teacher's logits on the training subset are computed once per process (eval mode, no
//! dropout in candle's BERT, so they equal a live teacher's up to float summation order) and
//! served to the KD loss by example id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use kd_core::checkpoint;
use kd_core::hash::{config_hash, sha256_file, short};
use kd_core::metric::{self, EvalScores, Metric};
use kd_core::plain::PlainTraining;
use kd_core::recipe::{Recipe, TeacherSection, TextSection};
use kd_core::registry::{BuildEnv, StageSpec, TeacherInfo, TrainSet, TrainedStage};
use kd_core::results::{run_rows, teacher_rows, TeacherScore};
use kd_core::seed::derive_seed;
use kd_core::teacher::TeacherLogits;
use kd_core::trainer::BatchSource;
use kd_core::{Batch, Classifier, EvalEntry, Losses, Method, Mode, StepContext};
use kd_data::glue::{
    load_text_split, model_file, text_subset, Encoded, GlueTask, TextDataset, TextLabels, TextLoader,
    TextSource, TextTokenizer,
};
use kd_data::HubCache;
use kd_models::bert::{self, BertArch, BertClassifier, Pooling};
use kd_models::text_cnn::{self, Config as TextCnnConfig};

use crate::build_env::core_error;
use crate::env;
use crate::models::{self, BuiltModel};
use crate::record::{ExperimentFiles, RowBase, Summary};
use crate::registry::ParsedMethod;
use crate::reproduce::{Args, Paths};
use crate::stage_cache::CachedModel;
use crate::train::{fit, Fit};

/// Everything a text recipe's runs share: task, tokenised splits, encoder config.
pub struct TextSetup {
    pub task: GlueTask,
    pub text: TextSection,
    pub pooling: Pooling,
    /// The pretrained model's `config.json` and `model.safetensors`, and its commit.
    pub base_config: bert::Config,
    pub weights: PathBuf,
    pub model_commit: String,
    pub train: Arc<Encoded>,
    pub train_labels: Arc<TextLabels>,
    pub eval: Arc<Encoded>,
    pub eval_labels: Arc<TextLabels>,
    pub revision: String,
    pub pad_id: u32,
}

/// Rows of `ds` at `indices`, as a dataset of their own.
fn take(ds: &TextDataset, indices: &[usize]) -> TextDataset {
    TextDataset {
        revision: ds.revision.clone(),
        first: indices.iter().map(|&i| ds.first[i].clone()).collect(),
        second: ds.second.as_ref().map(|b| indices.iter().map(|&i| b[i].clone()).collect()),
        labels: match &ds.labels {
            TextLabels::Classes(v) => TextLabels::Classes(indices.iter().map(|&i| v[i]).collect()),
            TextLabels::Scores(v) => TextLabels::Scores(indices.iter().map(|&i| v[i]).collect()),
        },
    }
}

/// An untrained, seeded text model: a BERT `bert-L<layers>[-H<hidden>-A<heads>]` shaped from
/// `base` (the pretrained model's config), or a text CNN `textcnn[-F<n>]` with `base`'s
/// vocabulary and width. `kd bench` builds its text students with it too.
pub fn new_text_model(
    arch: &str,
    base: &bert::Config,
    classes: usize,
    pooling: Pooling,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, Arc<dyn Classifier>)> {
    if arch.starts_with("textcnn") {
        let c = TextCnnConfig::parse(arch, base.vocab_size, base.hidden_size)?;
        let (varmap, model) = text_cnn::new_text_cnn(arch, &c, classes, seed, device)?;
        Ok((varmap, Arc::new(model)))
    } else {
        let config = BertArch::parse(arch)?.config(base);
        let (varmap, model) = bert::new_bert_model(arch, &config, classes, pooling, seed, device)?;
        Ok((varmap, Arc::new(model)))
    }
}

impl TextSetup {
    /// Reads the task's splits and the model repo's files through the hub cache and tokenises
    /// the subsets the recipe uses.
    pub fn load(cache: &HubCache, recipe: &Recipe) -> Result<Self> {
        let text = recipe.text.clone().ok_or_else(|| anyhow!("recipe has no [text] section"))?;
        let task = GlueTask::by_name(&text.task).context("[text] task")?;
        let d = &recipe.data;
        if d.num_classes != task.num_labels {
            bail!(
                "data.num_classes = {} but GLUE task `{}` has {} {}",
                d.num_classes,
                task.name,
                task.num_labels,
                if task.is_regression() { "output (a regression task: num_classes = 1)" } else { "labels" }
            );
        }
        let pooling = Pooling::parse(&text.pooling).context("[text] pooling")?;
        let columns: Vec<String> = if text.columns.is_empty() {
            task.text_columns.iter().map(|c| c.to_string()).collect()
        } else {
            text.columns.clone()
        };
        let src = TextSource {
            repo: d.hub.clone(),
            revision: d.revision.clone(),
            config: Some(d.config.clone().unwrap_or_else(|| task.name.to_string())),
            text_columns: columns,
            label_column: d.label_column.clone(),
            regression: task.is_regression(),
            num_labels: task.num_labels,
        };
        let train = load_text_split(cache, &src, &d.train_split)
            .with_context(|| format!("loading {} `{}` split `{}`", d.hub, task.name, d.train_split))?;
        let eval = load_text_split(cache, &src, &d.eval_split)
            .with_context(|| format!("loading {} `{}` split `{}`", d.hub, task.name, d.eval_split))?;
        let train = take(&train, &text_subset(&train.labels, d.train_limit, d.subset_seed));
        let eval = take(&eval, &text_subset(&eval.labels, d.eval_limit, d.subset_seed));
        let file = |name: &str| {
            model_file(cache, &text.model, &text.model_revision, name)
                .with_context(|| format!("[text] model `{}`", text.model))
        };
        let (tok_path, model_commit) = file("tokenizer.json")?;
        let (config_path, _) = file("config.json")?;
        let (weights, _) = file("model.safetensors")?;
        let tokenizer = TextTokenizer::from_file(&tok_path, text.max_len)?;
        let base_config = bert::read_config(&config_path)?;
        let enc_train = tokenizer.encode(&train)?;
        let enc_eval = tokenizer.encode(&eval)?;
        Ok(TextSetup {
            task,
            pooling,
            base_config,
            weights,
            model_commit,
            train: Arc::new(enc_train),
            train_labels: Arc::new(train.labels),
            eval: Arc::new(enc_eval),
            eval_labels: Arc::new(eval.labels),
            revision: train.revision,
            pad_id: tokenizer.pad_id,
            text,
        })
    }

    pub fn loader(
        &self,
        train: bool,
        batch_size: usize,
        drop_last: bool,
        seed: u64,
        device: &Device,
    ) -> TextLoader {
        let (enc, labels) =
            if train { (&self.train, &self.train_labels) } else { (&self.eval, &self.eval_labels) };
        TextLoader {
            enc: enc.clone(),
            labels: labels.clone(),
            indices: Arc::new((0..enc.len()).collect()),
            batch_size,
            shuffle: train,
            drop_last: train && drop_last,
            seed,
            pad_id: self.pad_id,
            device: device.clone(),
        }
    }

    /// The evaluation split for the trainer (length-sorted batches; labels are class ids, or
    /// the gold scores of a regression task).
    pub fn eval_loader(&self, batch_size: usize, device: &Device) -> TextLoader {
        self.loader(false, batch_size, false, 0, device)
    }

    /// The task's metrics, headline first: what every evaluation records and the rows carry.
    pub fn metrics(&self) -> Result<Vec<Arc<dyn Metric>>> {
        self.task.metrics.iter().map(|m| Ok(metric::by_name(m.name())?)).collect()
    }

    /// The eval split's gold labels in example order, as the metrics take them: `(n,)` u32
    /// class ids or f32 scores.
    pub fn eval_targets(&self, device: &Device) -> Result<Tensor> {
        Ok(match self.eval_labels.as_ref() {
            TextLabels::Classes(v) => Tensor::new(v.as_slice(), device)?,
            TextLabels::Scores(v) => Tensor::new(v.as_slice(), device)?,
        })
    }

    /// The variant `plain` (and teacher fine-tuning): cross-entropy on the labels, or MSE on
    /// the gold scores for a regression task.
    pub fn plain_method(&self, name: &str, model: Arc<dyn Classifier>) -> Box<dyn Method> {
        if self.task.is_regression() {
            Box::new(PlainScores { name: name.to_string(), model })
        } else {
            Box::new(PlainTraining::new(name, model, 0.0))
        }
    }

    /// A trainable student or teacher `arch`, seeded: a BERT (`bert-L…`), optionally started
    /// from the pretrained model's embeddings and `layers`; or a text CNN (`textcnn[-F<n>]`),
    /// optionally with the pretrained model's word embeddings (`layers` does not apply).
    pub fn build(
        &self,
        arch: &str,
        seed: u64,
        pretrained: Option<&[usize]>,
        device: &Device,
    ) -> Result<BuiltModel> {
        let classes = self.task.num_labels;
        let (varmap, model) = new_text_model(arch, &self.base_config, classes, self.pooling, seed, device)?;
        if let Some(layers) = pretrained {
            if arch.starts_with("textcnn") {
                text_cnn::load_pretrained_embeddings(&varmap, &self.weights)
                    .with_context(|| format!("initialising `{arch}` from {}", self.weights.display()))?;
            } else {
                let a = BertArch::parse(arch)?;
                let default: Vec<usize> = (0..a.layers).collect();
                let layers = if layers.is_empty() { &default[..] } else { layers };
                if layers.len() != a.layers || layers.iter().any(|&l| l >= self.base_config.num_hidden_layers)
                {
                    bail!(
                        "`{arch}` has {} layers; [text] student_layers {layers:?} must name as many of the \
                         pretrained model's {} layers",
                        a.layers,
                        self.base_config.num_hidden_layers
                    );
                }
                bert::load_pretrained_encoder(&varmap, &self.weights, layers)
                    .with_context(|| format!("initialising `{arch}` from {}", self.weights.display()))?;
            }
        }
        let mut state: Vec<(String, Var)> =
            varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        let trainable = state.clone();
        Ok(BuiltModel { arch: arch.to_string(), num_classes: classes, model, varmap, state, trainable })
    }

    /// Logits of `model` on every example of `enc` (length-sorted batches), in example order.
    pub fn outputs(
        &self,
        model: &dyn Classifier,
        train: bool,
        batch: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let loader = self.loader(false, batch, false, 0, device);
        let loader = if train {
            TextLoader {
                enc: self.train.clone(),
                labels: self.train_labels.clone(),
                indices: Arc::new((0..self.train.len()).collect()),
                ..loader
            }
        } else {
            loader
        };
        let n = loader.indices.len();
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; n];
        for b in loader.epoch(0) {
            let b = b?;
            let l = model.forward(&b.inputs, Mode::Eval)?.logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (id, row) in b.example_ids.iter().zip(l) {
                rows[*id as usize] = Some(row);
            }
        }
        let classes = self.task.num_labels;
        let flat: Vec<f32> = rows.into_iter().flat_map(|r| r.unwrap_or_else(|| vec![0.0; classes])).collect();
        Ok(Tensor::from_vec(flat, (n, classes), device)?)
    }
}

/// The `plain` baseline of a regression task: MSE between the one output and the gold score.
struct PlainScores {
    name: String,
    model: Arc<dyn Classifier>,
}

impl Method for PlainScores {
    fn name(&self) -> &str {
        &self.name
    }
    fn variant(&self) -> &str {
        "plain"
    }
    fn losses(&mut self, batch: &Batch, _ctx: &StepContext) -> candle_core::Result<Losses> {
        let out = self.model.forward(&batch.inputs, Mode::Train)?;
        let mse = kd_vanilla::mse(&out.logits, &batch.labels)?;
        Ok(Losses { total: mse.clone(), parts: vec![("mse".into(), mse.detach())] })
    }
    fn eval_entries(&self) -> Vec<EvalEntry> {
        vec![EvalEntry::of("student", self.model.as_ref())]
    }
    fn eval_logits(&self, inputs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        Ok(vec![self.model.forward(inputs, Mode::Eval)?.logits])
    }
}

/// Teacher logits computed once for the whole training subset, served by example id.
pub struct CachedTeacher {
    model: Arc<dyn Classifier>,
    logits: Tensor,
}

impl TeacherLogits for CachedTeacher {
    fn logits(&mut self, batch: &Batch) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(batch.example_ids.as_slice(), self.logits.device())?;
        self.logits.index_select(&ids, 0)
    }

    fn model(&self) -> &Arc<dyn Classifier> {
        &self.model
    }
}

/// The fine-tuned teacher: its file (cached by config hash), frozen model and scores.
pub struct GlueTeacher {
    pub path: PathBuf,
    pub hash: String,
    pub model: Arc<dyn Classifier>,
    pub arch: String,
    pub epochs: usize,
    /// The task's metrics on the eval split.
    pub scores: EvalScores,
    pub eval_seconds: f64,
}

/// Fine-tunes the teacher (or finds it in the cache) and scores it on the eval split.
pub fn teacher(
    root: &Path,
    recipe: &Recipe,
    t: &TeacherSection,
    setup: &TextSetup,
    device: &Device,
) -> Result<GlueTeacher> {
    let a = BertArch::parse(&t.arch)?;
    let config = a.config(&setup.base_config);
    let (path, epochs) = match (&t.checkpoint, &t.train) {
        (Some(c), _) => {
            let p = c
                .path
                .clone()
                .ok_or_else(|| anyhow!("teacher.checkpoint needs a `path` for a text teacher"))?;
            let sha = sha256_file(&p)?;
            if sha != c.sha256 {
                bail!(
                    "teacher checkpoint {}: SHA-256 {sha} differs from the recipe's {}",
                    p.display(),
                    c.sha256
                );
            }
            (p, 0)
        }
        (None, Some(tt)) => {
            let d = &recipe.data;
            // Only what determines the teacher's weights: the student's fields of [text] and the
            // students' optimiser (when the teacher names its own) do not, so student variants
            // (e.g. a text CNN profile with another learning rate) share one cached teacher.
            let text = &setup.text;
            let key = config_hash(&serde_json::json!({
                "kind": "glue-teacher",
                // v2: the encoder trains (v1 used candle-transformers' BERT, whose fused
                // LayerNorm has no backward: only the head was fine-tuned).
                "encoder": "kd-bert-v2",
                "text": { "task": text.task, "model": text.model, "model_revision": text.model_revision,
                          "max_len": text.max_len, "columns": text.columns, "pooling": text.pooling },
                "model_commit": setup.model_commit,
                "data": { "hub": d.hub, "revision": setup.revision, "config": d.config, "split": d.train_split,
                          "label": d.label_column, "limit": d.train_limit, "subset_seed": d.subset_seed },
                "arch": t.arch,
                "train": { "epochs": tt.epochs, "seed": tt.seed,
                           "batch_size": tt.batch_size.unwrap_or(recipe.train.batch_size),
                           "optimizer": tt.optimizer.as_ref().unwrap_or(&recipe.train.optimizer),
                           "lr_schedule": tt.lr_schedule.as_ref().unwrap_or(&recipe.train.lr_schedule),
                           "drop_last": recipe.train.drop_last },
            }))?;
            let cached = CachedModel::new(&env::cache_dir(root).join("glue-teachers"), short(&key));
            let path = cached.path.clone();
            if cached.is_cached() {
                eprintln!("teacher {}: fine-tuned copy found in {}", t.arch, path.display());
            } else {
                let t0 = Instant::now();
                let built = setup.build(
                    &t.arch,
                    derive_seed(tt.seed, "init/teacher"),
                    Some(&[] as &[usize]),
                    device,
                )?;
                let mut method = setup.plain_method("finetune", built.model.clone());
                let opt_spec = tt.optimizer.clone().unwrap_or_else(|| recipe.train.optimizer.clone());
                let bs = tt.batch_size.unwrap_or(recipe.train.batch_size);
                let train = setup.loader(
                    true,
                    bs,
                    recipe.train.drop_last,
                    derive_seed(tt.seed, "teacher-data"),
                    device,
                );
                let eval = setup.eval_loader(recipe.train.eval_batch_size, device);
                let lr_schedule = tt.lr_schedule.clone().unwrap_or_else(|| recipe.train.lr_schedule.clone());
                eprintln!(
                    "teacher {}: fine-tuning on {} examples ({} tokens), {} epochs → {}",
                    t.arch,
                    setup.train.len(),
                    setup.train.tokens(&(0..setup.train.len()).collect::<Vec<_>>()),
                    tt.epochs,
                    path.display()
                );
                let entries = crate::progress::as_role(method.eval_entries(), "teacher");
                cached.train(|ckpt| {
                    fit(Fit {
                        method: method.as_mut(),
                        state: &built.state,
                        trainable: built.trainable.clone(),
                        optimizer: &opt_spec,
                        epochs: tt.epochs,
                        lr_schedule: &lr_schedule,
                        checkpoint: ckpt,
                        run_id: &format!("glue-teacher/{key}"),
                        train_data: &train,
                        eval_data: &eval,
                        metrics: setup.metrics()?,
                        label: "teacher",
                        entries,
                    })
                    .context("fine-tuning the teacher")?;
                    let tensors: Vec<(String, Tensor)> =
                        built.state.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
                    let mut meta = BTreeMap::new();
                    meta.insert("kd.arch".to_string(), t.arch.clone());
                    meta.insert("kd.num_classes".to_string(), setup.task.num_labels.to_string());
                    meta.insert("kd.teacher_key".to_string(), key.clone());
                    meta.insert("kd.task".to_string(), setup.task.name.to_string());
                    Ok(checkpoint::save_checkpoint(&path, &tensors, &meta)?)
                })?;
                let secs = t0.elapsed().as_secs_f64();
                let tokens = setup.train.tokens(&(0..setup.train.len()).collect::<Vec<_>>()) * tt.epochs;
                eprintln!(
                    "teacher {}: fine-tuned in {secs:.0}s ({:.0} training tokens/s incl. evaluation)",
                    t.arch,
                    tokens as f64 / secs.max(1e-9)
                );
            }
            (path, tt.epochs)
        }
        (None, None) => bail!("[teacher] needs `train` (fine-tune it) or `checkpoint`"),
    };
    let (tensors, _) = checkpoint::load_checkpoint(&path)?;
    let model: BertClassifier = bert::frozen_bert_model(
        &t.arch,
        &config,
        setup.task.num_labels,
        setup.pooling,
        tensors.into_iter().collect(),
        &path,
        device,
    )?;
    let model: Arc<dyn Classifier> = Arc::new(model);
    let t0 = Instant::now();
    // Outputs and labels in example order, scored in one piece.
    let logits = setup.outputs(model.as_ref(), false, recipe.train.eval_batch_size, device)?;
    let scores = metric::score(&setup.metrics()?, &logits, &setup.eval_targets(device)?)?;
    Ok(GlueTeacher {
        hash: sha256_file(&path)?,
        path,
        model,
        arch: t.arch.clone(),
        epochs,
        scores,
        eval_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// What a text run offers a method's build: fresh students and peers (BERT or text CNN, from
/// the pretrained model as `[text]` says), the fine-tuned teachers' logits on the training
/// subset served by example id, and evaluation inputs. Stages (TAKD) are not offered.
struct TextBuildEnv<'a> {
    setup: &'a TextSetup,
    recipe: &'a Recipe,
    seed: u64,
    device: &'a Device,
    pretrained: Option<&'a [usize]>,
    teachers: &'a [(GlueTeacher, Tensor)],
}

impl BuildEnv for TextBuildEnv<'_> {
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
        None
    }

    fn model(&self, arch: &str, purpose: &str) -> kd_core::Result<BuiltModel> {
        self.setup
            .build(arch, derive_seed(self.seed, purpose), self.pretrained, self.device)
            .map_err(core_error)
    }

    fn teachers(&self) -> Vec<TeacherInfo> {
        self.teachers
            .iter()
            .map(|(t, _)| TeacherInfo {
                arch: t.arch.clone(),
                sha256: t.hash.clone(),
                soft_label_cache: false,
            })
            .collect()
    }

    fn teacher(&self, index: usize) -> kd_core::Result<Box<dyn TeacherLogits>> {
        let (t, logits) = self.teachers.get(index).ok_or_else(|| {
            kd_core::Error::Msg(format!("teacher {index} requested; the run loaded {}", self.teachers.len()))
        })?;
        Ok(Box::new(CachedTeacher { model: t.model.clone(), logits: logits.clone() }))
    }

    fn sample_inputs(&self, n: usize) -> kd_core::Result<Tensor> {
        let loader = self.setup.eval_loader(self.recipe.train.eval_batch_size, self.device);
        let batch = loader
            .epoch(0)
            .next()
            .ok_or_else(|| kd_core::Error::Msg("the evaluation split is empty".into()))??;
        Ok(batch.inputs.narrow(0, 0, n.min(batch.len()).max(1))?)
    }

    fn train_stage(
        &self,
        stage: &StageSpec,
        _make: &mut dyn FnMut(&BuiltModel) -> kd_core::Result<Box<dyn Method>>,
    ) -> kd_core::Result<TrainedStage> {
        Err(kd_core::Error::Msg(format!(
            "{}: text tasks do not train stages (TAKD assistants); use an image task",
            stage.role
        )))
    }

    /// The tokenised training subset: ids `0..n` (positions in it, as the text loader's
    /// batches carry them); labels for classification tasks, none for regression (STS-B).
    fn train_set(&self) -> kd_core::Result<TrainSet> {
        let n = self.setup.train_labels.len();
        let labels = match self.setup.train_labels.as_ref() {
            TextLabels::Classes(v) => Some(v.clone()),
            TextLabels::Scores(_) => None,
        };
        Ok(TrainSet { example_ids: (0..n as u32).collect(), labels })
    }
}

/// `kd reproduce` for a recipe with `[text]` (called by `reproduce::run`): any method of the
/// registry whose inputs a text task serves (vanilla, multi-teacher, annealing, ...).
pub fn run(args: &Args, paths: &Paths, recipe: &Recipe, hash: &str) -> Result<()> {
    let (seeds, variants) = args.selection(recipe)?;
    let method = ParsedMethod::parse(recipe)?;
    method.refuse_strong_views(&variants, "a text task")?;
    let exp = &recipe.experiment.name;
    let files = ExperimentFiles::new(paths, recipe, hash)?;
    files.adopt_old_run_folder()?;
    files.remove_dead_temporaries();
    let csv = &files.csv;
    let device = crate::env::device(&args.device)?;
    let existing = files.rows()?;
    let todo = crate::reproduce::runs_to_do(&existing, hash, &seeds, &variants, args.force, csv);
    if todo.is_empty() {
        eprintln!("nothing to do; results in {}", csv.display());
        return Ok(());
    }
    // Before any data is read: a folder that cannot be written fails now, not after training.
    files.check_writable(&crate::env::cache_dir(&paths.root))?;

    let t_load = Instant::now();
    let cache = HubCache::from_env();
    let setup = TextSetup::load(&cache, recipe)?;
    let train_tokens = setup.train.tokens(&(0..setup.train.len()).collect::<Vec<_>>());
    eprintln!(
        "data: {} `{}` @ {}: {} train examples ({train_tokens} tokens, max_len {}), {} {} examples; tokenizer {}; {:.1}s",
        recipe.data.hub,
        setup.task.name,
        short(&setup.revision),
        setup.train.len(),
        setup.text.max_len,
        setup.eval.len(),
        recipe.data.eval_split,
        setup.text.model,
        t_load.elapsed().as_secs_f64()
    );

    let mut teachers = Vec::new();
    if todo.iter().any(|(_, v)| method.needs_teachers(v)) {
        let sections = recipe.teacher_sections();
        if sections.is_empty() {
            bail!("a text recipe whose variants distil needs a [teacher]");
        }
        for section in sections {
            let t = teacher(&paths.root, recipe, section, &setup, &device)?;
            let line: Vec<String> = t.scores.values().map(|(m, v)| format!("{m} {v:.4}")).collect();
            eprintln!("teacher {} ({}): {}", t.arch, short(&t.hash), line.join(", "));
            let t0 = Instant::now();
            let logits = setup.outputs(t.model.as_ref(), true, recipe.train.eval_batch_size, &device)?;
            eprintln!("teacher logits on the training subset: {:.1}s", t0.elapsed().as_secs_f64());
            teachers.push((t, logits));
        }
    }
    let pretrained = match setup.text.student_init.as_str() {
        "pretrained" => Some(setup.text.student_layers.as_slice()),
        "random" => None,
        other => bail!("[text] student_init `{other}`: use `pretrained` or `random`"),
    };

    let eval = setup.eval_loader(recipe.train.eval_batch_size, &device);
    let metrics = setup.metrics()?;
    let headline = setup.task.metrics[0].name();
    let base = RowBase {
        recipe,
        methods: &method,
        profile: &args.profile,
        hash,
        dataset: recipe.data.hub.clone(),
        revision: setup.revision.clone(),
        train_examples: setup.train.len(),
        eval_examples: setup.eval.len(),
        split: recipe.data.eval_split.clone(),
        device: env::device_label(&device),
        git_commit: env::git_commit(&paths.root),
    };
    let mut summary = Summary::default();
    for (seed, variant) in &todo {
        let Some(_claim) = files.claim(variant, *seed, hash, args.force)? else {
            continue;
        };
        let started_at = env::now_rfc3339();
        let ckpt = files.checkpoint(variant, *seed);
        if args.force {
            files.discard_checkpoint(variant, *seed)?;
        }
        let build = TextBuildEnv {
            setup: &setup,
            recipe,
            seed: *seed,
            device: &device,
            pretrained,
            teachers: &teachers,
        };
        let mut trainee = method.build(variant, &build, &|name, model| setup.plain_method(name, model))?;
        let train = setup.loader(
            true,
            recipe.train.batch_size,
            recipe.train.drop_last,
            derive_seed(*seed, "data"),
            &device,
        );
        let (state, trainable) = trainee.variables()?;
        let entries = trainee.method.eval_entries();
        let report = fit(Fit {
            method: trainee.method.as_mut(),
            state: &state,
            trainable,
            optimizer: &recipe.train.optimizer,
            epochs: recipe.train.epochs,
            lr_schedule: &recipe.train.lr_schedule,
            checkpoint: &ckpt,
            run_id: &format!("{exp}/{variant}/seed{seed}/{hash}"),
            train_data: &train,
            eval_data: &eval,
            metrics: metrics.clone(),
            label: &format!("{variant} s{seed}"),
            entries,
        })
        .with_context(|| format!("training {variant} seed {seed} (checkpoint {})", ckpt.display()))?;
        let tokens_per_s = train_tokens as f64
            * report.history.iter().map(|r| r.train_examples).sum::<usize>() as f64
            / setup.train.len().max(1) as f64
            / report.train_seconds().max(1e-9);
        let used: Vec<&GlueTeacher> =
            trainee.teachers.iter().filter_map(|&i| teachers.get(i).map(|t| &t.0)).collect();
        let teacher_hash = used.iter().map(|t| t.hash.as_str()).collect::<Vec<_>>().join("+");
        let template = base.row(variant, *seed, &started_at);
        let mut rows = run_rows(&template, &report, &teacher_hash);
        summary.add_report(variant, &report, headline);
        for t in &used {
            rows.extend(teacher_rows(
                &template,
                &TeacherScore {
                    model: &t.arch,
                    params: t.model.num_params(),
                    scores: &t.scores,
                    epochs: t.epochs,
                    eval_seconds: t.eval_seconds,
                    eval_examples: setup.eval.len(),
                    hash: &t.hash,
                },
            ));
        }
        let final_path = files.final_model(variant, *seed);
        files.record_run(&rows, &base.history(variant, *seed, &report), || {
            models::save_final(&trainee.models[0].1, &final_path, recipe, hash)
        })?;
        eprintln!(
            "  {variant} seed {seed}: {} rows → {}; {:.0} tokens/s, {:.0} examples/s training; model → {}",
            rows.len(),
            csv.display(),
            tokens_per_s,
            report.train_examples_per_second(),
            final_path.display()
        );
    }
    eprintln!(
        "\n{exp}: {} on {} ({} examples), last epoch:",
        headline,
        recipe.data.eval_split,
        setup.eval.len()
    );
    for (t, _) in &teachers {
        let v = t.scores.get(headline).unwrap_or(f64::NAN);
        eprintln!("  teacher {:<14} {v:.4}", t.arch);
    }
    summary.print(22, 4);
    Ok(())
}
