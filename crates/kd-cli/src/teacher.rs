//! The teacher of an offline-KD run: pretrained weights pinned by SHA-256, evaluated once, and
//! served to methods live or through the soft-label cache.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use kd_core::hash::{config_hash, short};
use kd_core::recipe::{Recipe, TeacherSection};
use kd_core::soft_labels::{CachedTeacher, SoftLabelStore};
use kd_core::teacher::{LiveTeacher, TeacherLogits};
use kd_core::trainer::{self, BatchSource, EvalScores, TrainObserver};
use kd_core::{Classifier, Mode};
use kd_data::loader::render_batch;
use kd_data::LoaderConfig;

use crate::data::{augment, normalize, Loader, Split};
use crate::env;
use crate::progress::{bar, EpochBars};

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
}

struct SoftLabelCache {
    store: Arc<Mutex<SoftLabelStore>>,
    path: PathBuf,
    key: String,
}

impl Teacher {
    /// Resolves and verifies the checkpoint, loads it frozen and evaluates it once.
    pub fn load(
        root: &Path,
        t: &TeacherSection,
        recipe: &Recipe,
        eval: &Loader,
        device: &Device,
    ) -> Result<Self> {
        let path =
            crate::fetch::resolve_checkpoint(&t.checkpoint, root, &env::cache_dir(root), env::offline())?;
        // Frozen: plain tensors, so teacher forwards build no gradient graph.
        let model: Arc<dyn Classifier> = Arc::from(
            kd_models::load_frozen_model(
                &t.arch,
                recipe.data.num_classes,
                kd_models::BuildOptions::default(),
                &path,
                device,
            )
            .with_context(|| format!("loading teacher {} from {}", t.arch, path.display()))?,
        );
        let t0 = Instant::now();
        let mut bars = EpochBars::new("teacher", Vec::new());
        bars.on_eval_start(eval.steps());
        let scores =
            trainer::evaluate_with(eval, 1, &mut bars, |x| Ok(vec![model.forward(x, Mode::Eval)?.logits]))?
                [0];
        bars.on_epoch_end_quiet();
        let eval_seconds = t0.elapsed().as_secs_f64();
        eprintln!(
            "teacher {} ({}): top1 {:.2} on {} in {:.1}s",
            t.arch,
            path.display(),
            scores.top1,
            recipe.data.eval_split,
            eval_seconds
        );
        Ok(Teacher {
            arch: t.arch.clone(),
            model,
            hash: t.checkpoint.sha256.to_lowercase(),
            scores,
            eval_seconds,
            cache: None,
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
                    seed: 0,
                    epoch: 0,
                };
                let t0 = Instant::now();
                let pb = bar(todo.len() as u64, "soft labels");
                for chunk in todo.chunks(FILL_BATCH) {
                    let batch = render_batch(&train.dataset, chunk, &cfg, device)?;
                    let logits = self.model.forward(&batch.inputs, Mode::Eval)?.logits.to_vec2::<f32>()?;
                    for (&(i, code), l) in chunk.iter().zip(logits) {
                        store.insert(i as u32, code, l);
                    }
                    pb.inc(chunk.len() as u64);
                }
                pb.finish_and_clear();
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
        Ok(match &self.cache {
            Some(c) => Box::new(CachedTeacher::new(self.model.clone(), c.store.clone())),
            None => Box::new(LiveTeacher::new(self.model.clone())),
        })
    }

    /// Saves what a run added to the cache and reports its hit rate.
    pub fn after_run(&self) -> Result<()> {
        if let Some(c) = &self.cache {
            let mut store = c.store.lock().map_err(|_| anyhow::anyhow!("soft-label store lock poisoned"))?;
            let stats = std::mem::take(&mut store.stats);
            if stats.hits + stats.misses > 0 {
                eprintln!(
                    "  soft-label cache: {} hits, {} teacher calls ({:.1}% served from cache)",
                    stats.hits,
                    stats.misses,
                    100.0 * stats.hits as f64 / (stats.hits + stats.misses) as f64
                );
            }
            store.save(&c.path, &c.key)?;
        }
        Ok(())
    }
}
