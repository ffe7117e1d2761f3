//! The dataset card's YAML header (the front matter between the first two `---` lines of the
//! repo's `README.md`), read for what split resolution and labels need, as the hub's `datasets`
//! library reads it:
//!
//! - `configs: [{config_name, default, data_files}]`, where `data_files` is a pattern, a list
//!   of patterns (both: split `train`), a map `split → pattern(s)`, or a list of
//!   `{split, path}` with `path` a pattern or a list of them;
//! - `dataset_info` (one map, or a list with one map per config): `features[].dtype.class_label.names`
//!   (a map `'0': name` or a list), the class names of a label column.
//!
//! Parsed with `yaml-rust2` (pure Rust, maintained; `serde_yaml` is deprecated).

use std::collections::BTreeMap;

use yaml_rust2::{Yaml, YamlLoader};

/// One entry of the card's `configs:` list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CardConfig {
    pub name: String,
    /// `default: true` in the card.
    pub default: bool,
    /// `split → path patterns` (repo-relative, `*` globs).
    pub data_files: BTreeMap<String, Vec<String>>,
}

/// What kd-data reads of a dataset card.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatasetCard {
    /// In card order.
    pub configs: Vec<CardConfig>,
    /// `config name → column → class names` (index = label id). A card whose `dataset_info` is
    /// a single map without `config_name` files its features under `""`.
    pub class_names: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// `config_name → split → path patterns`.
pub type DataFiles = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The YAML front matter of a card, if it has one.
fn front_matter(card: &str) -> Option<&str> {
    let rest = card.trim_start_matches('\u{feff}');
    let rest = rest.strip_prefix("---")?;
    let rest = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix('\n'))?;
    // The header ends at the next line that is exactly `---`.
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some(&rest[..offset]);
        }
        offset += line.len();
    }
    None
}

/// A scalar as text (`'0'`, `0`, `true` all become strings).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A pattern or a list of patterns.
fn patterns(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

fn data_files(y: &Yaml) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match y {
        Yaml::Array(items) if items.iter().all(|i| i.as_hash().is_some()) => {
            for item in items {
                if let Some(split) = scalar(&item["split"]) {
                    out.entry(split).or_default().extend(patterns(&item["path"]));
                }
            }
        }
        Yaml::Hash(map) => {
            for (k, v) in map {
                if let Some(split) = scalar(k) {
                    out.entry(split).or_default().extend(patterns(v));
                }
            }
        }
        // A bare pattern (or list of them) is the `train` split, as in `datasets`.
        other => {
            let p = patterns(other);
            if !p.is_empty() {
                out.insert("train".into(), p);
            }
        }
    }
    out
}

/// Class names of a `class_label` feature: `names: {'0': a, '1': b}` or `names: [a, b]`.
fn label_names(names: &Yaml) -> Option<Vec<String>> {
    match names {
        Yaml::Array(items) => items.iter().map(scalar).collect(),
        Yaml::Hash(map) => {
            let mut pairs: Vec<(usize, String)> = map
                .iter()
                .map(|(k, v)| Some((scalar(k)?.parse().ok()?, scalar(v)?)))
                .collect::<Option<_>>()?;
            pairs.sort();
            // Ids must be exactly 0..n.
            pairs
                .iter()
                .enumerate()
                .all(|(i, (id, _))| i == *id)
                .then(|| pairs.into_iter().map(|p| p.1).collect())
        }
        _ => None,
    }
}

fn features(info: &Yaml) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for f in info["features"].as_vec().into_iter().flatten() {
        let (Some(name), Some(names)) =
            (scalar(&f["name"]), label_names(&f["dtype"]["class_label"]["names"]))
        else {
            continue;
        };
        out.insert(name, names);
    }
    out
}

impl DatasetCard {
    /// Parses a card (`README.md` text). A card without front matter is empty; YAML that does
    /// not parse is an error message (the caller adds repo and revision).
    pub fn parse(card: &str) -> Result<Self, String> {
        let Some(header) = front_matter(card) else { return Ok(Self::default()) };
        let docs = YamlLoader::load_from_str(header).map_err(|e| format!("README.md YAML header: {e}"))?;
        let Some(doc) = docs.first() else { return Ok(Self::default()) };
        let configs = doc["configs"]
            .as_vec()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(CardConfig {
                    name: scalar(&c["config_name"])?,
                    default: c["default"].as_bool().unwrap_or(false),
                    data_files: data_files(&c["data_files"]),
                })
            })
            .collect();
        let mut class_names = BTreeMap::new();
        match &doc["dataset_info"] {
            Yaml::Array(infos) => {
                for info in infos {
                    let name = scalar(&info["config_name"]).unwrap_or_default();
                    class_names.insert(name, features(info));
                }
            }
            info @ Yaml::Hash(_) => {
                let name = scalar(&info["config_name"]).unwrap_or_default();
                class_names.insert(name, features(info));
            }
            _ => {}
        }
        Ok(Self { configs, class_names })
    }

    /// The config a request means: the named one, else the card's `default: true`, else the
    /// only one. `Err` lists the choices.
    pub fn config(&self, name: Option<&str>) -> Result<&CardConfig, String> {
        let names = || self.configs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self
                .configs
                .iter()
                .find(|c| c.name == n)
                .ok_or_else(|| format!("no config `{n}` in the dataset card; it has: {}", names())),
            None => self
                .configs
                .iter()
                .find(|c| c.default)
                .or_else(|| (self.configs.len() == 1).then(|| &self.configs[0]))
                .ok_or_else(|| {
                    format!(
                        "the dataset card has several configs and none is default; name one of: {}",
                        names()
                    )
                }),
        }
    }

    /// Class names of `column` in `config` (the card's feature list for that config, or the
    /// single unnamed one).
    pub fn class_names(&self, config: Option<&str>, column: &str) -> Option<&[String]> {
        let by_config = match config {
            Some(c) => self.class_names.get(c).or_else(|| {
                // A single-config card may file its features under another or no name.
                (self.class_names.len() == 1).then(|| self.class_names.values().next()).flatten()
            }),
            None if self.class_names.len() == 1 => self.class_names.values().next(),
            None => self.config(None).ok().and_then(|c| self.class_names.get(&c.name)),
        }?;
        by_config.get(column).map(Vec::as_slice)
    }
}

/// `config_name → split → path patterns` of a card (empty when it has none).
pub fn parse_configs(card: &str) -> DataFiles {
    DatasetCard::parse(card)
        .map(|c| c.configs.into_iter().map(|c| (c.name, c.data_files)).collect())
        .unwrap_or_default()
}

/// Shell-style match of `*` and `?` (within one path component; `**` crosses folders) against a
/// repo-relative file name.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn rec(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
                // `**/` also matches no folder at all.
                let after = if p.get(2) == Some(&b'/') { &p[3..] } else { &p[2..] };
                rec(after, n) || (!n.is_empty() && rec(p, &n[1..]))
            }
            (Some(b'*'), _) => rec(&p[1..], n) || (!n.is_empty() && n[0] != b'/' && rec(p, &n[1..])),
            (Some(b'?'), Some(&c)) if c != b'/' => rec(&p[1..], &n[1..]),
            (Some(&a), Some(&b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    rec(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIFAR10: &str = "---\ndataset_info:\n  config_name: plain_text\n  features:\n  - name: img\n    dtype: image\n  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': airplane\n          '1': automobile\n          '2': bird\n  splits:\n  - name: train\n    num_examples: 10000\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n  - split: test\n    path:\n    - plain_text/test-*\n    - extra/test-*\n  default: true\n- config_name: other\n  data_files:\n  - split: train\n    path: \"o/train-*\"\n---\n# text\n---\n";

    #[test]
    fn parses_hub_card_configs() {
        let c = parse_configs(CIFAR10);
        assert_eq!(c["plain_text"]["train"], vec!["plain_text/train-*"]);
        assert_eq!(c["plain_text"]["test"], vec!["plain_text/test-*", "extra/test-*"]);
        assert_eq!(c["other"]["train"], vec!["o/train-*"]);
        let card = DatasetCard::parse(CIFAR10).unwrap();
        assert_eq!(card.config(None).unwrap().name, "plain_text", "the default config");
        assert_eq!(card.configs[1].name, "other", "card order is kept");
        let e = card.config(Some("nope")).unwrap_err();
        assert!(e.contains("plain_text, other"), "{e}");
    }

    #[test]
    fn reads_class_label_names_per_config() {
        let card = DatasetCard::parse(CIFAR10).unwrap();
        assert_eq!(
            card.class_names(Some("plain_text"), "label").unwrap(),
            ["airplane", "automobile", "bird"]
        );
        assert_eq!(card.class_names(None, "label").unwrap().len(), 3);
        assert!(card.class_names(None, "img").is_none());
        // GLUE-style: a list of infos, several configs, names as a list.
        let glue = "---\ndataset_info:\n- config_name: sst2\n  features:\n  - name: label\n    dtype:\n      class_label:\n        names: [negative, positive]\n- config_name: cola\n  features:\n  - name: label\n    dtype:\n      class_label:\n        names:\n          0: unacceptable\n          1: acceptable\nconfigs:\n- config_name: sst2\n  data_files: sst2/train-*\n- config_name: cola\n  data_files:\n    train: cola/train-*\n    validation: [cola/validation-*]\n---\n";
        let card = DatasetCard::parse(glue).unwrap();
        assert_eq!(card.class_names(Some("cola"), "label").unwrap(), ["unacceptable", "acceptable"]);
        assert_eq!(card.class_names(Some("sst2"), "label").unwrap(), ["negative", "positive"]);
        assert_eq!(card.configs[0].data_files["train"], ["sst2/train-*"]);
        assert_eq!(card.configs[1].data_files["validation"], ["cola/validation-*"]);
        let e = card.config(None).unwrap_err();
        assert!(e.contains("sst2, cola"), "no default among several configs: {e}");
    }

    #[test]
    fn cards_without_header_or_with_bad_yaml() {
        assert_eq!(DatasetCard::parse("# just text").unwrap(), DatasetCard::default());
        assert!(DatasetCard::parse("---\nconfigs: [a, \n---\n").is_err());
    }

    #[test]
    fn glob_stays_within_a_folder() {
        assert!(glob_match("plain_text/train-*", "plain_text/train-00000-of-00001.parquet"));
        assert!(!glob_match("plain_text/train-*", "plain_text/test-00000-of-00001.parquet"));
        assert!(!glob_match("data/*", "data/sub/x.parquet"));
        assert!(glob_match("data/**/*.parquet", "data/sub/x.parquet"));
        assert!(glob_match("data/**/*.parquet", "data/x.parquet"));
        assert!(glob_match("data/train-0000?-*", "data/train-00001-of-00002.parquet"));
    }
}
