//! GLUE tasks from the hub (`nyu-mll/glue`, the hub's schema), tokenised with a model repo's
//! `tokenizer.json`, batched with dynamic padding; each task names its official metrics (kd-core's
//! `metric` computes them).
//!
//! - [`GlueTask`]: the nine tasks by name, with their text columns, label space and metrics.
//! - [`load_text_split`]: one split's texts and labels through the hub cache (a missing task,
//!   split or column is an error naming it and listing what exists).
//! - [`TextTokenizer`]: `tokenizer.json` with truncation to the recipe's `max_len` and no
//!   padding (the file's own settings pad every sequence to 128; we pad per batch instead).
//! - [`text_batch`] / [`TextLoader`]: `(batch, 3, seq)` u32 inputs — rows `input_ids`,
//!   `token_type_ids`, `attention_mask` — padded to the longest sequence of the batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use kd_core::trainer::BatchSource;
use kd_core::Batch;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::DataError;
use crate::hub::HubCache;
use crate::table::{read_split_columns, Cell};

/// Which number a GLUE task is scored by: a name of one of kd-core's metrics
/// (`kd_core::metric::by_name`), which computes it in the units GLUE reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlueMetric {
    /// Percentage of correct predictions (0–100).
    Accuracy,
    /// F1 of the positive class (label 1), as a percentage.
    F1,
    /// Matthews correlation coefficient, in [−1, 1] (CoLA).
    Mcc,
    /// Pearson correlation of predicted and gold scores (STS-B).
    Pearson,
    /// Spearman rank correlation (STS-B).
    Spearman,
}

impl GlueMetric {
    /// Name in the results CSV's `metric` column.
    pub fn name(self) -> &'static str {
        match self {
            GlueMetric::Accuracy => "accuracy",
            GlueMetric::F1 => "f1",
            GlueMetric::Mcc => "mcc",
            GlueMetric::Pearson => "pearson",
            GlueMetric::Spearman => "spearman",
        }
    }
}

/// A GLUE task: the hub config name, its text columns, label space and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct GlueTask {
    /// Config name in `nyu-mll/glue` (`sst2`, `cola`, ...).
    pub name: &'static str,
    /// One column (single-sentence task) or two (sentence pair).
    pub text_columns: &'static [&'static str],
    /// Classes; 1 for the regression task (STS-B).
    pub num_labels: usize,
    /// Official metrics, the first being the task's headline number.
    pub metrics: &'static [GlueMetric],
    /// The split GLUE's dev numbers are reported on.
    pub eval_split: &'static str,
}

impl GlueTask {
    pub fn is_regression(&self) -> bool {
        self.num_labels == 1
    }

    /// Every task name [`GlueTask::by_name`] knows.
    pub fn names() -> Vec<&'static str> {
        TASKS.iter().map(|t| t.name).collect()
    }

    /// The task called `name`; an unknown name lists the known ones.
    pub fn by_name(name: &str) -> Result<GlueTask, DataError> {
        TASKS.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
            DataError::Invalid(format!("unknown GLUE task `{name}`; known: {}", GlueTask::names().join(", ")))
        })
    }
}

use GlueMetric::*;

const TASKS: &[GlueTask] = &[
    GlueTask {
        name: "cola",
        text_columns: &["sentence"],
        num_labels: 2,
        metrics: &[Mcc, Accuracy],
        eval_split: "validation",
    },
    GlueTask {
        name: "sst2",
        text_columns: &["sentence"],
        num_labels: 2,
        metrics: &[Accuracy],
        eval_split: "validation",
    },
    GlueTask {
        name: "mrpc",
        text_columns: &["sentence1", "sentence2"],
        num_labels: 2,
        metrics: &[F1, Accuracy],
        eval_split: "validation",
    },
    GlueTask {
        name: "qqp",
        text_columns: &["question1", "question2"],
        num_labels: 2,
        metrics: &[F1, Accuracy],
        eval_split: "validation",
    },
    GlueTask {
        name: "stsb",
        text_columns: &["sentence1", "sentence2"],
        num_labels: 1,
        metrics: &[Pearson, Spearman],
        eval_split: "validation",
    },
    GlueTask {
        name: "mnli",
        text_columns: &["premise", "hypothesis"],
        num_labels: 3,
        metrics: &[Accuracy],
        eval_split: "validation_matched",
    },
    GlueTask {
        name: "qnli",
        text_columns: &["question", "sentence"],
        num_labels: 2,
        metrics: &[Accuracy],
        eval_split: "validation",
    },
    GlueTask {
        name: "rte",
        text_columns: &["sentence1", "sentence2"],
        num_labels: 2,
        metrics: &[Accuracy],
        eval_split: "validation",
    },
    GlueTask {
        name: "wnli",
        text_columns: &["sentence1", "sentence2"],
        num_labels: 2,
        metrics: &[Accuracy],
        eval_split: "validation",
    },
];

/// Gold labels of a split: class ids, or similarity scores (STS-B).
#[derive(Debug, Clone, PartialEq)]
pub enum TextLabels {
    Classes(Vec<u32>),
    Scores(Vec<f32>),
}

impl TextLabels {
    pub fn len(&self) -> usize {
        match self {
            TextLabels::Classes(v) => v.len(),
            TextLabels::Scores(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One split of a text task: one or two segments per example, and the labels.
#[derive(Debug, Clone)]
pub struct TextDataset {
    /// Commit the rows came from (the results rows' `revision`).
    pub revision: String,
    /// Segment A of every example.
    pub first: Vec<String>,
    /// Segment B (sentence-pair tasks).
    pub second: Option<Vec<String>>,
    pub labels: TextLabels,
}

impl TextDataset {
    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

/// Where a text split comes from.
#[derive(Debug, Clone)]
pub struct TextSource {
    pub repo: String,
    pub revision: String,
    /// Dataset config (for GLUE the task name).
    pub config: Option<String>,
    /// One or two text columns.
    pub text_columns: Vec<String>,
    pub label_column: String,
    /// Scores (regression) instead of class ids.
    pub regression: bool,
    /// Class count: a label outside `0..num_labels` is an error naming the row.
    pub num_labels: usize,
}

/// Reads `split` of `src`: texts and labels, checked (unlabelled rows, `-1` in GLUE's test
/// splits, are an error that says so).
pub fn load_text_split(cache: &HubCache, src: &TextSource, split: &str) -> Result<TextDataset, DataError> {
    if src.text_columns.is_empty() || src.text_columns.len() > 2 {
        return Err(DataError::Invalid(format!(
            "dataset {}: a text task has one or two text columns, got {:?}",
            src.repo, src.text_columns
        )));
    }
    let mut cols: Vec<&str> = src.text_columns.iter().map(String::as_str).collect();
    cols.push(&src.label_column);
    let table =
        read_split_columns(cache, &src.repo, &src.revision, src.config.as_deref(), split, None, &cols)?;
    let file = table.resolved.paths.first().cloned().unwrap_or_default();
    let text = |name: &str| -> Result<Vec<String>, DataError> {
        let column = table.column(name).unwrap_or_default();
        column
            .iter()
            .enumerate()
            .map(|(row, c)| match c {
                Cell::Str(s) => Ok(s.clone()),
                other => Err(DataError::BadColumn {
                    file: file.clone(),
                    column: name.to_string(),
                    message: format!("row {row}: expected text, found {other:?}"),
                }),
            })
            .collect()
    };
    let first = text(&src.text_columns[0])?;
    let second = match src.text_columns.get(1) {
        Some(c) => Some(text(c)?),
        None => None,
    };
    let raw = table.column(&src.label_column).unwrap_or_default();
    let bad = |row: usize, message: String| DataError::BadColumn {
        file: file.clone(),
        column: src.label_column.clone(),
        message: format!("row {row}: {message}"),
    };
    let labels = if src.regression {
        let v = raw
            .iter()
            .enumerate()
            .map(|(row, c)| {
                c.as_f64().map(|x| x as f32).ok_or_else(|| bad(row, format!("not a number: {c:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        TextLabels::Scores(v)
    } else {
        let v = raw
            .iter()
            .enumerate()
            .map(|(row, c)| match c.as_i64() {
                Some(l) if l >= 0 && (l as usize) < src.num_labels => Ok(l as u32),
                Some(-1) => {
                    Err(bad(row, format!("label -1: split `{split}` is unlabelled (GLUE test splits are)")))
                }
                Some(l) => Err(bad(row, format!("label {l} outside 0..{}", src.num_labels))),
                None => Err(bad(row, format!("not a class id: {c:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        TextLabels::Classes(v)
    };
    Ok(TextDataset { revision: table.resolved.commit.clone(), first, second, labels })
}

/// A model repo's file (`tokenizer.json`, `config.json`, `model.safetensors`) from the hub cache
/// (`$HF_HOME/hub/models--owner--name/snapshots/<commit>/`), or downloaded when online with the
/// timeouts and retries of every hub request ([`HubCache::model_file`]). Returns the path and
/// the commit.
pub fn model_file(
    cache: &HubCache,
    repo: &str,
    revision: &str,
    name: &str,
) -> Result<(PathBuf, String), DataError> {
    cache.model_file(repo, revision, name)
}

/// Token ids and segment ids of every example, truncated to the tokenizer's `max_len`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    pub ids: Vec<Vec<u32>>,
    pub type_ids: Vec<Vec<u32>>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens of all examples (what tokens/s counts).
    pub fn tokens(&self, indices: &[usize]) -> usize {
        indices.iter().map(|&i| self.ids[i].len()).sum()
    }
}

/// A `tokenizer.json` with truncation set to `max_len` (longest-first for pairs, as BERT's
/// GLUE scripts) and the file's padding switched off: batches are padded to their longest
/// sequence with `pad_id`.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub max_len: usize,
    pub pad_id: u32,
}

impl TextTokenizer {
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self, DataError> {
        let err = |m: String| DataError::Invalid(format!("{}: {m}", path.display()));
        if max_len < 3 {
            return Err(err(format!("max_len must be at least 3 ([CLS] x [SEP]), got {max_len}")));
        }
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| err(format!("not a tokenizer.json: {e}")))?;
        let pad_id =
            inner.get_padding().map(|p| p.pad_id).or_else(|| inner.token_to_id("[PAD]")).unwrap_or(0);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                strategy: tokenizers::TruncationStrategy::LongestFirst,
                stride: 0,
                direction: tokenizers::TruncationDirection::Right,
            }))
            .map_err(|e| err(format!("truncation: {e}")))?;
        inner.with_padding(None);
        Ok(Self { inner, max_len, pad_id })
    }

    /// Encodes every example of `ds` (with special tokens: `[CLS] a [SEP] (b [SEP])`).
    pub fn encode(&self, ds: &TextDataset) -> Result<Encoded, DataError> {
        let inputs: Vec<tokenizers::EncodeInput> = match &ds.second {
            None => ds.first.iter().map(|a| a.as_str().into()).collect(),
            Some(b) => ds.first.iter().zip(b).map(|(a, b)| (a.as_str(), b.as_str()).into()).collect(),
        };
        let encs = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| DataError::Invalid(format!("tokenising: {e}")))?;
        Ok(Encoded {
            ids: encs.iter().map(|e| e.get_ids().to_vec()).collect(),
            type_ids: encs.iter().map(|e| e.get_type_ids().to_vec()).collect(),
        })
    }
}

/// The `(n, 3, L)` u32 input of examples `indices`: rows `input_ids` (padded with `pad_id`),
/// `token_type_ids` (0-padded), `attention_mask` (1 on tokens, 0 on padding); `L` is the
/// longest sequence among them.
pub fn pad_inputs(
    enc: &Encoded,
    indices: &[usize],
    pad_id: u32,
    device: &Device,
) -> Result<Tensor, DataError> {
    let len = indices.iter().map(|&i| enc.ids[i].len()).max().unwrap_or(0).max(1);
    let mut data = vec![0u32; indices.len() * 3 * len];
    for (b, &i) in indices.iter().enumerate() {
        let base = b * 3 * len;
        let ids = &enc.ids[i];
        for t in 0..len {
            data[base + t] = ids.get(t).copied().unwrap_or(pad_id);
            data[base + len + t] = enc.type_ids[i].get(t).copied().unwrap_or(0);
            data[base + 2 * len + t] = u32::from(t < ids.len());
        }
    }
    Ok(Tensor::from_vec(data, (indices.len(), 3, len), device)?)
}

/// One batch of examples `indices`: padded inputs, labels (`(n,)` u32 classes or f32 scores),
/// example ids, view 0 (text is not augmented).
pub fn text_batch(
    enc: &Encoded,
    labels: &TextLabels,
    indices: &[usize],
    pad_id: u32,
    device: &Device,
) -> Result<Batch, DataError> {
    let inputs = pad_inputs(enc, indices, pad_id, device)?;
    let labels = match labels {
        TextLabels::Classes(v) => {
            Tensor::from_vec(indices.iter().map(|&i| v[i]).collect(), indices.len(), device)?
        }
        TextLabels::Scores(v) => {
            Tensor::from_vec(indices.iter().map(|&i| v[i]).collect(), indices.len(), device)?
        }
    };
    Ok(Batch {
        inputs,
        labels,
        example_ids: indices.iter().map(|&i| i as u32).collect(),
        views: vec![0; indices.len()],
        strong: None,
    })
}

/// `limit` examples of a split: class-balanced for classification (as image recipes), a seeded
/// random choice for scores; sorted; every example when `limit` is `None` or too large.
pub fn text_subset(labels: &TextLabels, limit: Option<usize>, seed: u64) -> Vec<usize> {
    let n = labels.len();
    match (limit, labels) {
        (Some(k), TextLabels::Classes(l)) if k < n => crate::subset::balanced_subset(l, k, seed),
        (Some(k), TextLabels::Scores(_)) if k < n => {
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            let mut some = all[..k].to_vec();
            some.sort_unstable();
            some
        }
        _ => (0..n).collect(),
    }
}

/// Batches of a tokenised split for the trainer. Training: shuffled per epoch from
/// `(seed, epoch)`. Evaluation: sorted by length (less padding), the same every epoch.
pub struct TextLoader {
    pub enc: Arc<Encoded>,
    pub labels: Arc<TextLabels>,
    pub indices: Arc<Vec<usize>>,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub pad_id: u32,
    pub device: Device,
}

impl TextLoader {
    /// The examples of epoch `epoch`, batched.
    pub fn plan(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = self.indices.to_vec();
        if self.shuffle {
            let mut rng =
                ChaCha8Rng::seed_from_u64(kd_core::seed::derive_seed(self.seed, &format!("epoch/{epoch}")));
            order.shuffle(&mut rng);
        } else {
            order.sort_by_key(|&i| (self.enc.ids[i].len(), i));
        }
        let bs = self.batch_size.max(1);
        let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
        if self.drop_last && batches.last().is_some_and(|b| b.len() < bs) {
            batches.pop();
        }
        batches
    }
}

impl BatchSource for TextLoader {
    fn steps(&self) -> usize {
        let (n, b) = (self.indices.len(), self.batch_size.max(1));
        if self.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    fn examples(&self) -> usize {
        if self.drop_last {
            self.steps() * self.batch_size
        } else {
            self.indices.len()
        }
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = kd_core::Result<Batch>> + '_> {
        Box::new(self.plan(epoch).into_iter().map(move |idx| {
            text_batch(&self.enc, &self.labels, &idx, self.pad_id, &self.device)
                .map_err(|e| kd_core::Error::Msg(e.to_string()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> Encoded {
        Encoded {
            ids: vec![vec![101, 7, 102], vec![101, 8, 9, 10, 102], vec![101, 102]],
            type_ids: vec![vec![0, 0, 0], vec![0, 0, 1, 1, 1], vec![0, 0]],
        }
    }

    #[test]
    fn pad_inputs_pads_to_the_longest_of_the_batch() {
        let t = pad_inputs(&enc(), &[0, 2], 0, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 3, 3]);
        let v: Vec<Vec<Vec<u32>>> = t.to_vec3().unwrap();
        assert_eq!(v[0], vec![vec![101, 7, 102], vec![0, 0, 0], vec![1, 1, 1]]);
        assert_eq!(v[1], vec![vec![101, 102, 0], vec![0, 0, 0], vec![1, 1, 0]]);
        let t = pad_inputs(&enc(), &[1, 0], 5, &Device::Cpu).unwrap();
        let v: Vec<Vec<Vec<u32>>> = t.to_vec3().unwrap();
        assert_eq!(v[1], vec![vec![101, 7, 102, 5, 5], vec![0, 0, 0, 0, 0], vec![1, 1, 1, 0, 0]]);
        assert_eq!(v[0][1], vec![0, 0, 1, 1, 1]);
    }

    #[test]
    fn loader_shuffles_training_and_sorts_evaluation_by_length() {
        let mk = |shuffle, drop_last| TextLoader {
            enc: Arc::new(enc()),
            labels: Arc::new(TextLabels::Classes(vec![0, 1, 0])),
            indices: Arc::new(vec![0, 1, 2]),
            batch_size: 2,
            shuffle,
            drop_last,
            seed: 3,
            pad_id: 0,
            device: Device::Cpu,
        };
        assert_eq!(mk(false, false).plan(0), vec![vec![2, 0], vec![1]]);
        assert_eq!(mk(false, true).plan(0), vec![vec![2, 0]]);
        let l = mk(true, false);
        assert_eq!(l.plan(4), l.plan(4), "an epoch's order depends only on (seed, epoch)");
        let mut all: Vec<usize> = l.plan(4).concat();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2]);
        let b = l.epoch(0).next().unwrap().unwrap();
        assert_eq!(b.inputs.dims()[1], 3);
        assert_eq!(b.labels.dims(), &[2]);
    }

    #[test]
    fn task_names_and_unknown_task() {
        assert_eq!(GlueTask::by_name("sst2").unwrap().text_columns, &["sentence"]);
        assert!(GlueTask::by_name("stsb").unwrap().is_regression());
        let e = GlueTask::by_name("sst3").unwrap_err().to_string();
        assert!(e.contains("sst3") && e.contains("cola"), "{e}");
    }

    #[test]
    fn subsets_are_balanced_or_seeded() {
        let labels = TextLabels::Classes(vec![0, 0, 0, 0, 1, 1]);
        let s = text_subset(&labels, Some(4), 1);
        assert_eq!(s.iter().filter(|&&i| i >= 4).count(), 2);
        let scores = TextLabels::Scores(vec![0.0; 10]);
        assert_eq!(text_subset(&scores, Some(3), 1), text_subset(&scores, Some(3), 1));
        assert_eq!(text_subset(&scores, None, 1).len(), 10);
    }
}
