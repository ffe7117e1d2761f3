//! The teacher of an offline-KD run: pretrained weights pinned by SHA-256, evaluated once, and
//! served to methods live or through the soft-label cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use kd_core::hash::{config_hash, short};
use kd_core::metric;
use kd_core::recipe::{Recipe, TeacherSection};
use kd_core::soft_labels::{CachedTeacher, SoftLabelStore};
use kd_core::teacher::{LiveTeacher, TeacherLogits};
use kd_core::trainer::{self, BatchSource, EvalScores};
use kd_core::{Classifier, Mode};
use kd_data::loader::render_batch;
use kd_data::LoaderConfig;

use crate::data::{augment, normalize, Loader, Split};
use crate::env;
use crate::progress;

/// Teacher inference batch when filling the cache.
const FILL_BATCH: usize = 256;

pub struct Teacher {
    /// Architecture name as in the recipe.
    pub arch: String,
    pub model: Arc<dyn Classifier>,
    /// SHA-256 of the weights file.
    pub hash: String,
    pub scores: EvalScores,
    pub eval_seconds: f64,
    cache: Option<SoftLabelCache>,
    /// Time methods spent getting this teacher's logits during the current run.
    cost: Arc<TeacherCost>,
}

/// Seconds (as nanoseconds) and batches spent in a teacher's `logits` calls.
#[derive(Default)]
struct TeacherCost {
    nanos: AtomicU64,
    batches: AtomicU64,
}

/// Times every call, so each run reports what its teachers cost.
struct TimedLogits {
    inner: Box<dyn TeacherLogits>,
    cost: Arc<TeacherCost>,
}

impl TeacherLogits for TimedLogits {
    fn logits(&mut self, batch: &kd_core::Batch) -> candle_core::Result<candle_core::Tensor> {
        let t0 = Instant::now();
        let out = self.inner.logits(batch);
        self.cost.nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.cost.batches.fetch_add(1, Ordering::Relaxed);
        out
    }

    fn model(&self) -> &Arc<dyn Classifier> {
        self.inner.model()
    }

    fn serves(&self, request: &kd_core::teacher::FeatureRequest) -> bool {
        self.inner.serves(request)
    }

    fn outputs(
        &mut self,
        batch: &kd_core::Batch,
        request: &kd_core::teacher::FeatureRequest,
    ) -> candle_core::Result<kd_core::teacher::TeacherOutputs> {
        let t0 = Instant::now();
        let out = self.inner.outputs(batch, request);
        self.cost.nanos.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.cost.batches.fetch_add(1, Ordering::Relaxed);
        out
    }
}

struct SoftLabelCache {
    store: Arc<Mutex<SoftLabelStore>>,
    path: PathBuf,
    key: String,
}

impl Teacher {
    /// Resolves and verifies the checkpoint (or trains the teacher once, for a recipe-trained
    /// teacher), loads it frozen and evaluates it once.
    pub fn load(
        root: &Path,
        t: &TeacherSection,
        recipe: &Recipe,
        train: &Split,
        eval: &Loader,
        device: &Device,
    ) -> Result<Self> {
        let (path, hash) = match (&t.checkpoint, &t.train) {
            (Some(c), _) => (
                crate::fetch::resolve_checkpoint(c, root, &env::cache_dir(root), env::offline())?,
                c.sha256.to_lowercase(),
            ),
            (None, Some(spec)) => {
                let trained = crate::teacher_train::ensure_trained(
                    &env::cache_dir(root),
                    t,
                    spec,
                    recipe,
                    train,
                    eval,
                    device,
                )?;
                (trained.path, trained.hash)
            }
            (None, None) => anyhow::bail!("teacher {} has neither `checkpoint` nor `train`", t.arch),
        };
        // Frozen: plain tensors, so teacher forwards build no gradient graph.
        let model: Arc<dyn Classifier> = Arc::from(
            kd_models::load_frozen_model(
                &t.arch,
                recipe.data.num_classes,
                crate::models::input_options(&train.dataset),
                &path,
                device,
            )
            .with_context(|| format!("loading teacher {} from {}", t.arch, path.display()))?,
        );
        let t0 = Instant::now();
        let mut bars = crate::progress::training("teacher", Vec::new());
        bars.on_eval_start(eval.steps());
        let scores = trainer::evaluate_with(eval, 1, &metric::top1_top5(), bars.as_mut(), |x| {
            Ok(vec![model.forward(x, Mode::Eval)?.logits])
        })?
        .remove(0);
        drop(bars);
        let eval_seconds = t0.elapsed().as_secs_f64();
        eprintln!(
            "teacher {} ({}): top1 {:.2} on {} in {:.1}s",
            t.arch,
            path.display(),
            scores.get("top1").unwrap_or(f64::NAN),
            // `train[val]` in a sweep's validation mode: the split actually evaluated.
            crate::validation::eval_split_name(&recipe.data),
            eval_seconds
        );
        Ok(Teacher {
            arch: t.arch.clone(),
            model,
            hash,
            scores,
            eval_seconds,
            cache: None,
            cost: Default::default(),
        })
    }

    /// Opens (or creates) the soft-label cache for this teacher and training data; with a view
    /// bank, computes every banked view up front at inference batch size.
    pub fn prepare_cache(
        &mut self,
        root: &Path,
        recipe: &Recipe,
        train: &Split,
        device: &Device,
    ) -> Result<()> {
        let d = &recipe.data;
        // Everything a cached logit depends on: weights, the exact data, the rendering.
        let key = config_hash(&serde_json::json!({
            "teacher_sha256": self.hash,
            "dataset": d.hub,
            "revision": train.dataset.revision,
            "split": d.train_split,
            "normalize": d.normalize,
            "augment": d.augment.as_ref().map(|a| (a.pad, a.hflip)),
        }))?;
        let path = env::cache_dir(root).join("soft-labels").join(format!("{}.safetensors", short(&key)));
        let mut store = if path.exists() {
            SoftLabelStore::load(&path, &key)?
        } else {
            SoftLabelStore::new(self.model.num_classes())
        };
        let before = store.len();
        if let Some(aug @ kd_data::Augment { bank: Some((k, bank_seed)), .. }) = augment(d) {
            let todo: Vec<(usize, u32)> = train
                .indices
                .iter()
                .flat_map(|&i| (0..k).map(move |j| (i, aug.bank_view(bank_seed, i, j).encode(aug.pad))))
                .filter(|&(i, code)| store.get(i as u32, code).is_none())
                .collect();
            if !todo.is_empty() {
                let cfg = LoaderConfig {
                    batch_size: FILL_BATCH,
                    shuffle: false,
                    drop_last: false,
                    augment: Some(aug),
                    normalize: normalize(d),
                    strong: None,
                    seed: 0,
                    epoch: 0,
                };
                let t0 = Instant::now();
                let pb = progress::counter(todo.len() as u64, "soft labels");
                for chunk in todo.chunks(FILL_BATCH) {
                    let batch = render_batch(&train.dataset, chunk, &cfg, device)?;
                    let logits = self.model.forward(&batch.inputs, Mode::Eval)?.logits.to_vec2::<f32>()?;
                    for (&(i, code), l) in chunk.iter().zip(logits) {
                        store.insert(i as u32, code, l);
                    }
                    pb.inc(chunk.len() as u64);
                }
                drop(pb);
                let secs = t0.elapsed().as_secs_f64();
                eprintln!(
                    "soft-label cache: teacher ran on {} banked views ({} per example) in {secs:.1}s ({:.0} ex/s)",
                    todo.len(),
                    k,
                    todo.len() as f64 / secs.max(1e-9)
                );
            }
        }
        store.save(&path, &key)?;
        eprintln!(
            "soft-label cache {}: {} entries ({} new)",
            path.display(),
            store.len(),
            store.len() - before
        );
        self.cache = Some(SoftLabelCache { store: Arc::new(Mutex::new(store)), path, key });
        Ok(())
    }

    /// Teacher logits for a method: through the cache when there is one.
    pub fn logits_source(&self) -> Result<Box<dyn TeacherLogits>> {
        let inner: Box<dyn TeacherLogits> = match &self.cache {
            Some(c) => Box::new(CachedTeacher::new(self.model.clone(), c.store.clone())),
            None => Box::new(LiveTeacher::new(self.model.clone())),
        };
        Ok(Box::new(TimedLogits { inner, cost: self.cost.clone() }))
    }

    /// Its top-1 on the evaluation split (percent).
    pub fn top1(&self) -> f64 {
        self.scores.get("top1").unwrap_or(f64::NAN)
    }

    /// Saves what a run added to the cache and reports its hit rate.
    pub fn after_run(&self) -> Result<()> {
        let batches = self.cost.batches.swap(0, Ordering::Relaxed);
        let secs = self.cost.nanos.swap(0, Ordering::Relaxed) as f64 * 1e-9;
        let mut how = "live".to_string();
        if let Some(c) = &self.cache {
            let mut store = c.store.lock().map_err(|_| anyhow::anyhow!("soft-label store lock poisoned"))?;
            let stats = std::mem::take(&mut store.stats);
            let total = (stats.hits + stats.misses).max(1);
            how = format!(
                "soft-label cache: {} hits, {} teacher calls, {:.1}% served from cache",
                stats.hits,
                stats.misses,
                100.0 * stats.hits as f64 / total as f64
            );
            store.save(&c.path, &c.key)?;
        }
        if batches > 0 {
            // Eval mode, no gradient: the teacher's whole cost in this run.
            eprintln!("  teacher {}: {secs:.1}s for {batches} training batches ({how})", self.arch);
        }
        Ok(())
    }
}
