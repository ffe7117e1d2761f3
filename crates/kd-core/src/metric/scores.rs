//! [`EvalScores`]: the values of one evaluated model's metrics after one evaluation.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Each metric's value, in the order the task declared them; `None` for a metric that does
/// not apply (`top5` of a model with fewer than 5 classes).
///
/// Serialised as a JSON object in that order, `None` as `null`: a top-1/top-5 evaluation is
/// `{"top1":81.2,"top5":99.1}` or `{"top1":81.2,"top5":null}`, the form checkpoints and
/// `results/*.history.jsonl` have always held, so old files read back as they were written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalScores(Vec<(String, Option<f64>)>);

impl EvalScores {
    /// Scores from `(metric, value)` pairs, kept in that order.
    pub fn new<S: Into<String>>(values: impl IntoIterator<Item = (S, Option<f64>)>) -> Self {
        Self(values.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// The value of `metric`, if measured and applicable.
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.0.iter().find(|(k, _)| k == metric).and_then(|(_, v)| *v)
    }

    /// Every metric name, in order, applicable or not.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The applicable `(metric, value)` pairs, in order.
    pub fn values(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().filter_map(|(k, v)| Some((k.as_str(), (*v)?)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for EvalScores {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for EvalScores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = EvalScores;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of metric names to numbers or null")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EvalScores, A::Error> {
                let mut values = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Option<f64>>()? {
                    values.push((k, v));
                }
                Ok(EvalScores(values))
            }
        }
        d.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_top1_top5_json_reads_and_writes_back_unchanged() {
        for old in [r#"{"top1":81.2,"top5":99.1}"#, r#"{"top1":50.15,"top5":null}"#] {
            let s: EvalScores = serde_json::from_str(old).unwrap();
            assert_eq!(serde_json::to_string(&s).unwrap(), old);
        }
        let s: EvalScores = serde_json::from_str(r#"{"top1": 81.2, "top5": null}"#).unwrap();
        assert_eq!(s.get("top1"), Some(81.2));
        assert_eq!(s.get("top5"), None, "null: not applicable");
        assert_eq!(s.names().collect::<Vec<_>>(), ["top1", "top5"]);
        assert_eq!(s.values().collect::<Vec<_>>(), [("top1", 81.2)]);
        // What the derived serialisation of the old `{ top1: f64, top5: Option<f64> }` wrote.
        assert_eq!(
            serde_json::to_string(&EvalScores::new([("top1", Some(34.0)), ("top5", Some(88.5))])).unwrap(),
            r#"{"top1":34.0,"top5":88.5}"#
        );
    }

    #[test]
    fn task_metrics_keep_their_order() {
        let s = EvalScores::new([("mcc", Some(0.25)), ("accuracy", Some(56.25))]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"mcc":0.25,"accuracy":56.25}"#);
        let back: EvalScores = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.names().collect::<Vec<_>>(), ["mcc", "accuracy"]);
        assert!(serde_json::from_str::<EvalScores>(r#"{"top1":"x"}"#).is_err());
    }
}
