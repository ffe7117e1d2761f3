//! The configuration hash: the name of a configuration in rows, run folders and citations.
//!
//! It covers what determines a run's numbers (data, models, teachers' weights by SHA-256,
//! budget, optimiser, method settings) and nothing else: not where a teacher file lies or
//! which URL serves it (the SHA-256 pins its bytes), not how the experiment is presented
//! (title, citations), not which seeds or variants the recipe lists (each is a CSV column,
//! and a run never reads the others'). So moving a teacher file, fixing a title or adding a
//! variant keeps every row pointing to its configuration.
//!
//! Rows written before this scheme (kd-bench ≤ 0.1 at commit 586853c, "v1") carry the hash of
//! the whole resolved recipe without its seed list. The v1 hash of a configuration is still
//! computed ([`legacy_recipe_hash`]) so those rows are read as rows of that configuration:
//! [`HashAliases`] maps each v1 hash to the current one.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::hash::config_hash;
use crate::history::RunHistory;
use crate::recipe::Recipe;
use crate::results::ResultRow;

/// Paths into the resolved recipe left out of the hash (`[]` walks every element of a list).
const NOT_HASHED: [&[&str]; 8] = [
    &["experiment", "seeds"],
    &["experiment", "variants"],
    &["experiment", "title"],
    &["experiment", "cite"],
    &["teacher", "checkpoint", "path"],
    &["teacher", "checkpoint", "url"],
    &["teachers", "[]", "checkpoint", "path"],
    &["teachers", "[]", "checkpoint", "url"],
];

/// The part of a resolved recipe (as JSON) that names its configuration: [`NOT_HASHED`] removed.
pub fn identity(recipe: &Value) -> Value {
    let mut v = recipe.clone();
    for path in NOT_HASHED {
        remove(&mut v, path);
    }
    v
}

fn remove(v: &mut Value, path: &[&str]) {
    match path {
        [] => {}
        ["[]", rest @ ..] => {
            if let Value::Array(items) = v {
                items.iter_mut().for_each(|item| remove(item, rest));
            }
        }
        [last] => {
            if let Value::Object(m) = v {
                m.remove(*last);
            }
        }
        [key, rest @ ..] => {
            if let Some(child) = v.get_mut(*key) {
                remove(child, rest);
            }
        }
    }
}

fn to_json(recipe: &Recipe) -> Result<Value> {
    serde_json::to_value(recipe).map_err(|e| Error::Msg(format!("recipe `{}`: {e}", recipe.experiment.name)))
}

/// The configuration hash of a resolved recipe (hex SHA-256 of its [`identity`]).
pub fn recipe_hash(recipe: &Recipe) -> Result<String> {
    recipe_hash_of(&to_json(recipe)?)
}

/// [`recipe_hash`] of a resolved recipe stored as JSON (a sweep's `configs.jsonl` line).
pub fn recipe_hash_of(recipe: &Value) -> Result<String> {
    config_hash(&identity(recipe))
}

/// The v1 hash rows written before this scheme carry: the whole resolved recipe, seeds cleared.
pub fn legacy_recipe_hash(recipe: &Recipe) -> Result<String> {
    let mut r = recipe.clone();
    r.experiment.seeds.clear();
    config_hash(&to_json(&r)?)
}

/// [`legacy_recipe_hash`] of a resolved recipe stored as JSON with its seeds cleared.
pub fn legacy_recipe_hash_of(recipe: &Value) -> Result<String> {
    config_hash(recipe)
}

/// Old (v1) configuration hashes and the current hash of the same configuration.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HashAliases {
    current: BTreeMap<String, String>,
}

impl HashAliases {
    /// Records that rows hashed `old` belong to configuration `current` (nothing when equal).
    pub fn add(&mut self, old: String, current: String) {
        if old != current {
            self.current.insert(old, current);
        }
    }

    /// Both hashes of `recipe`: rows of its v1 hash are read as rows of its current one.
    pub fn add_recipe(&mut self, recipe: &Recipe) -> Result<String> {
        let current = recipe_hash(recipe)?;
        self.add(legacy_recipe_hash(recipe)?, current.clone());
        Ok(current)
    }

    /// The current name of configuration `hash` (itself when it is no alias).
    pub fn current<'a>(&'a self, hash: &'a str) -> &'a str {
        self.current.get(hash).map(String::as_str).unwrap_or(hash)
    }

    /// The current hashes of the old hashes starting with `prefix` (a hash cited before the
    /// scheme changed still finds its configuration).
    pub fn current_of_old_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.current.iter().filter(move |(o, _)| o.starts_with(prefix)).map(|(_, c)| c.as_str())
    }

    /// The old hashes that name `current`.
    pub fn old_names<'a>(&'a self, current: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.current.iter().filter(move |(_, c)| c.as_str() == current).map(|(o, _)| o.as_str())
    }

    /// Renames the v1 hashes of `rows` to their configurations' current hashes.
    pub fn rename_rows(&self, rows: &mut [ResultRow]) {
        for r in rows {
            if let Some(c) = self.current.get(&r.config_hash) {
                r.config_hash = c.clone();
            }
        }
    }

    /// [`HashAliases::rename_rows`] for history lines.
    pub fn rename_history(&self, runs: &mut [RunHistory]) {
        for r in runs {
            if let Some(c) = self.current.get(&r.config_hash) {
                r.config_hash = c.clone();
            }
        }
    }

    /// Adds every alias of `other`.
    pub fn extend(&mut self, other: &HashAliases) {
        for (o, c) in &other.current {
            self.add(o.clone(), c.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_drops_locations_and_presentation_only() {
        let r = json!({
            "experiment": {"name": "e", "title": "T", "cite": ["a"], "seeds": [0], "variants": ["plain"], "method": "kd"},
            "teacher": {"arch": "resnet56", "checkpoint": {"path": "../x.th", "url": "https://h/x.th", "sha256": "ab"}},
            "teachers": [{"arch": "r20", "checkpoint": {"path": "/a", "sha256": "cd"}}, {"arch": "r32", "train": {"epochs": 3}}],
            "train": {"epochs": 3},
        });
        let want = json!({
            "experiment": {"name": "e", "method": "kd"},
            "teacher": {"arch": "resnet56", "checkpoint": {"sha256": "ab"}},
            "teachers": [{"arch": "r20", "checkpoint": {"sha256": "cd"}}, {"arch": "r32", "train": {"epochs": 3}}],
            "train": {"epochs": 3},
        });
        assert_eq!(identity(&r), want);
    }

    #[test]
    fn moving_a_teacher_keeps_the_hash_changing_its_bytes_does_not() {
        let at = |path: &str, sha: &str| json!({"experiment": {"name": "e"}, "teacher": {"checkpoint": {"path": path, "sha256": sha}}});
        let h = |v: &Value| recipe_hash_of(v).unwrap();
        assert_eq!(h(&at("../shared/t.th", "ab")), h(&at("/elsewhere/t.th", "ab")));
        assert_ne!(h(&at("../shared/t.th", "ab")), h(&at("../shared/t.th", "ac")));
    }

    #[test]
    fn aliases_map_old_names_to_current_ones() {
        let mut a = HashAliases::default();
        a.add("old".into(), "new".into());
        a.add("same".into(), "same".into());
        assert_eq!(a.current("old"), "new");
        assert_eq!(a.current("new"), "new");
        assert_eq!(a.current("other"), "other");
        assert_eq!(a.len(), 1);
        assert_eq!(a.old_names("new").collect::<Vec<_>>(), vec!["old"]);
    }
}
