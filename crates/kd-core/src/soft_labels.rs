//! Teacher soft-label cache for offline KD: the teacher's logits per (example, augmentation
//! view), computed once and reused across epochs, variants, sweeps and seeds.
//!
//! Exactness: a cached entry is the teacher's output on exactly that example and view (the
//! view code fixes crop offset and flip), so a hit equals a live teacher call (up to float
//! summation order when batch composition differs, ~1e-6); the
//! cache changes nothing but cost. How often views repeat is the data pipeline's business: with
//! fully random crops few do, with a per-example bank of K views (see the recipe docs) every
//! view after the first K epochs is a hit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use crate::batch::Batch;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::model::{Classifier, Mode};
use crate::teacher::TeacherLogits;

/// Logits per `(example id, view code)`, all of one teacher on one split of one data revision.
#[derive(Debug, Clone, Default)]
pub struct SoftLabelStore {
    classes: usize,
    entries: HashMap<(u32, u32), Vec<f32>>,
    dirty: bool,
    /// Lookups served from the store / computed by the teacher since creation or load.
    pub stats: CacheStats,
}

impl SoftLabelStore {
    pub fn new(classes: usize) -> Self {
        Self { classes, entries: HashMap::new(), dirty: false, stats: CacheStats::default() }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, example: u32, view: u32) -> Option<&[f32]> {
        self.entries.get(&(example, view)).map(Vec::as_slice)
    }

    pub fn insert(&mut self, example: u32, view: u32, logits: Vec<f32>) {
        debug_assert_eq!(logits.len(), self.classes);
        self.entries.insert((example, view), logits);
        self.dirty = true;
    }

    /// Loads a store written by [`SoftLabelStore::save`]; its metadata must match `key`.
    pub fn load(path: &Path, key: &str) -> Result<Self> {
        let (tensors, meta) = checkpoint::load_checkpoint(path)?;
        let err = |m: String| Error::Checkpoint { path: path.to_path_buf(), message: m };
        if meta.get("kd.soft_labels.key").map(String::as_str) != Some(key) {
            return Err(err(format!("soft-label cache is for another teacher/data (want key {key})")));
        }
        let ids = tensors.get("ids").ok_or_else(|| err("missing tensor `ids`".into()))?.to_vec2::<u32>()?;
        let logits = tensors.get("logits").ok_or_else(|| err("missing tensor `logits`".into()))?;
        let classes = logits.dim(1)?;
        let logits = logits.to_vec2::<f32>()?;
        if ids.len() != logits.len() {
            return Err(err(format!("{} ids but {} logit rows", ids.len(), logits.len())));
        }
        let entries = ids.into_iter().zip(logits).map(|(k, v)| ((k[0], k[1]), v)).collect();
        Ok(Self { classes, entries, dirty: false, stats: CacheStats::default() })
    }

    /// Writes the store atomically (only when it changed since load or the last save).
    pub fn save(&mut self, path: &Path, key: &str) -> Result<()> {
        if !self.dirty || self.entries.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<&(u32, u32)> = self.entries.keys().collect();
        keys.sort();
        let n = keys.len();
        let ids: Vec<u32> = keys.iter().flat_map(|(e, v)| [*e, *v]).collect();
        let logits: Vec<f32> = keys.iter().flat_map(|k| self.entries[k].iter().copied()).collect();
        let tensors = vec![
            ("ids".to_string(), Tensor::from_vec(ids, (n, 2), &Device::Cpu)?),
            ("logits".to_string(), Tensor::from_vec(logits, (n, self.classes), &Device::Cpu)?),
        ];
        let meta = [("kd.soft_labels.key".to_string(), key.to_string())].into_iter().collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        checkpoint::save_checkpoint(path, &tensors, &meta)?;
        self.dirty = false;
        Ok(())
    }
}

/// Counts of cache use, for the cost report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

/// A teacher behind a soft-label cache: misses run the teacher (eval mode, no gradient) on the
/// missing rows only; hits cost a copy. The store is shared so the caller can save it after
/// training.
pub struct CachedTeacher {
    model: Arc<dyn Classifier>,
    store: Arc<Mutex<SoftLabelStore>>,
}

impl CachedTeacher {
    pub fn new(model: Arc<dyn Classifier>, store: Arc<Mutex<SoftLabelStore>>) -> Self {
        Self { model, store }
    }
}

impl TeacherLogits for CachedTeacher {
    fn logits(&mut self, batch: &Batch) -> candle_core::Result<Tensor> {
        let mut store = self
            .store
            .lock()
            .map_err(|_| candle_core::Error::Msg("soft-label store lock poisoned".into()))?;
        let missing: Vec<u32> = (0..batch.len() as u32)
            .filter(|&i| store.get(batch.example_ids[i as usize], batch.views[i as usize]).is_none())
            .collect();
        store.stats.misses += missing.len();
        store.stats.hits += batch.len() - missing.len();
        if !missing.is_empty() {
            let idx = Tensor::new(missing.as_slice(), batch.inputs.device())?;
            let rows = batch.inputs.index_select(&idx, 0)?;
            let out =
                self.model.forward(&rows, Mode::Eval)?.logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
            for (&i, l) in missing.iter().zip(out) {
                store.insert(batch.example_ids[i as usize], batch.views[i as usize], l);
            }
        }
        let classes = self.model.num_classes();
        let mut flat = Vec::with_capacity(batch.len() * classes);
        for i in 0..batch.len() {
            let l = store.get(batch.example_ids[i], batch.views[i]).expect("every row was filled above");
            flat.extend_from_slice(l);
        }
        Tensor::from_vec(flat, (batch.len(), classes), batch.inputs.device())
    }

    fn model(&self) -> &Arc<dyn Classifier> {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::ModelOutput;

    /// logits = x · W for a fixed W: a stand-in teacher.
    struct Linear(Tensor);
    impl Classifier for Linear {
        fn forward(&self, x: &Tensor, _mode: Mode) -> candle_core::Result<ModelOutput> {
            let logits = x.matmul(&self.0)?;
            Ok(ModelOutput { logits: logits.clone(), stage_features: vec![], embedding: logits })
        }
        fn num_classes(&self) -> usize {
            3
        }
        fn arch(&self) -> &str {
            "linear"
        }
        fn num_params(&self) -> usize {
            6
        }
    }

    fn batch(ids: &[u32], views: &[u32], x: &[[f32; 2]]) -> Batch {
        Batch {
            inputs: Tensor::from_vec(x.concat(), (x.len(), 2), &Device::Cpu).unwrap(),
            labels: Tensor::new(vec![0u32; ids.len()], &Device::Cpu).unwrap(),
            example_ids: ids.to_vec(),
            views: views.to_vec(),
            strong: None,
        }
    }

    #[test]
    fn cached_teacher_equals_live_teacher_and_counts_hits() {
        let w = Tensor::new(&[[1f32, 0., -1.], [0.5, 2., 0.]], &Device::Cpu).unwrap();
        let model: Arc<dyn Classifier> = Arc::new(Linear(w));
        let store = Arc::new(Mutex::new(SoftLabelStore::new(3)));
        let mut cached = CachedTeacher::new(model.clone(), store.clone());
        let mut live = crate::teacher::LiveTeacher::new(model);
        let b1 = batch(&[0, 1], &[5, 5], &[[1., 2.], [3., -1.]]);
        let c = cached.logits(&b1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c, live.logits(&b1).unwrap().to_vec2::<f32>().unwrap());
        // Same example, other view: a miss; same (example, view): a hit with the stored value
        // even when the inputs tensor would give something else (the key is the contract).
        let b2 = batch(&[1, 0], &[6, 5], &[[0., 1.], [9., 9.]]);
        let c2 = cached.logits(&b2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c2[0], vec![0.5, 2.0, 0.0]);
        assert_eq!(c2[1], c[0]);
        let st = store.lock().unwrap().stats;
        assert_eq!(st, CacheStats { hits: 1, misses: 3 });
    }

    #[test]
    fn cached_teacher_serves_logits_only() {
        use crate::teacher::FeatureRequest;
        let w = Tensor::new(&[[1f32, 0., -1.], [0.5, 2., 0.]], &Device::Cpu).unwrap();
        let model: Arc<dyn Classifier> = Arc::new(Linear(w));
        let mut cached = CachedTeacher::new(model, Arc::new(Mutex::new(SoftLabelStore::new(3))));
        let b = batch(&[0, 1], &[5, 5], &[[1., 2.], [3., -1.]]);
        let logits = cached.outputs(&b, &FeatureRequest::none()).unwrap().logits.to_vec2::<f32>().unwrap();
        assert_eq!(logits, cached.logits(&b).unwrap().to_vec2::<f32>().unwrap());
        let stages = FeatureRequest { stages: true, embedding: false };
        assert!(!cached.serves(&stages));
        let e = cached.outputs(&b, &stages).unwrap_err().to_string();
        assert!(e.contains("logits only"), "{e}");
    }

    #[test]
    fn store_round_trips_and_refuses_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let mut s = SoftLabelStore::new(3);
        s.insert(5, 17, vec![1.0, 2.0, 3.0]);
        s.insert(0, 0, vec![-1.0, 0.5, 0.0]);
        s.save(&p, "k1").unwrap();
        let l = SoftLabelStore::load(&p, "k1").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.get(5, 17), Some(&[1.0f32, 2.0, 3.0][..]));
        assert!(l.get(5, 16).is_none());
        assert!(SoftLabelStore::load(&p, "k2").unwrap_err().to_string().contains("another teacher"));
    }
}
