//! Hub resolution, cache first. The cache layout is hf-hub's (`$HF_HOME/hub/datasets--o--n/`
//! with `refs/<revision>` holding a commit and files under `snapshots/<commit>/`).
//! With `HF_HUB_OFFLINE=1` the network is never touched; otherwise a file missing from the
//! cache is downloaded through hf-hub's API into the same cache.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::card::{glob_match, parse_configs};
use crate::error::DataError;

/// Where datasets come from: the hub cache, and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubCache {
    /// `$HF_HOME` (the cache itself is `$HF_HOME/hub`).
    pub hf_home: PathBuf,
    pub offline: bool,
}

/// A split resolved to files of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSplit {
    pub commit: String,
    /// Repo-relative names, sorted.
    pub names: Vec<String>,
    pub paths: Vec<PathBuf>,
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

impl HubCache {
    /// `$HF_HOME` (default `~/.cache/huggingface`) and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let hf_home = std::env::var_os("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("huggingface")
        });
        let offline = matches!(
            std::env::var("HF_HUB_OFFLINE").map(|v| v.to_ascii_lowercase()).as_deref(),
            Ok("1") | Ok("true") | Ok("yes") | Ok("on")
        );
        Self { hf_home, offline }
    }

    pub fn new(hf_home: PathBuf, offline: bool) -> Self {
        Self { hf_home, offline }
    }

    fn cache(&self) -> Cache {
        Cache::new(self.hf_home.join("hub"))
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.hf_home.join("hub").join(Repo::new(repo.to_string(), RepoType::Dataset).folder_name())
    }

    fn not_cached(&self, repo: &str, revision: &str, what: String, why: &str) -> DataError {
        DataError::NotCached {
            repo: repo.into(),
            revision: revision.into(),
            what,
            cache: self.hf_home.join("hub"),
            why: why.into(),
        }
    }

    /// The commit a revision points to in the cache, if any.
    fn cached_commit(&self, repo: &str, revision: &str) -> Option<String> {
        let dir = self.repo_dir(repo);
        if let Ok(c) = std::fs::read_to_string(dir.join("refs").join(revision)) {
            return Some(c.trim().to_string());
        }
        (is_commit(revision) && dir.join("snapshots").join(revision).is_dir()).then(|| revision.to_string())
    }

    fn api_repo(&self, repo: &str, revision: &str) -> Result<hf_hub::api::sync::ApiRepo, DataError> {
        let api = hf_hub::api::sync::ApiBuilder::from_cache(self.cache())
            .with_progress(true)
            .build()
            .map_err(|e| DataError::Hub {
                repo: repo.into(),
                revision: revision.into(),
                message: format!("hub client: {e}"),
            })?;
        Ok(api.repo(Repo::with_revision(repo.to_string(), RepoType::Dataset, revision.to_string())))
    }

    /// Resolves `split` of `config` to parquet files: the card's `configs[].data_files`
    /// patterns, else `{config}/{split}-*` or `data/{split}-*`; or exactly `explicit` files.
    pub fn resolve_split(
        &self,
        repo: &str,
        revision: &str,
        config: Option<&str>,
        split: &str,
        explicit: Option<&[String]>,
    ) -> Result<ResolvedSplit, DataError> {
        // The repo's file list and commit: from the cache snapshot, or the hub when allowed.
        let (commit, files) = match self.cached_commit(repo, revision) {
            Some(commit) => {
                let snap = self.repo_dir(repo).join("snapshots").join(&commit);
                if !snap.is_dir() {
                    return Err(self.not_cached(repo, revision, format!("snapshot {commit}"), ""));
                }
                (commit, list_files(&snap))
            }
            None if self.offline => {
                let why = if self.repo_dir(repo).is_dir() {
                    " (no such revision cached)"
                } else {
                    " (repo not cached)"
                };
                return Err(self.not_cached(
                    repo,
                    revision,
                    "the repo".into(),
                    &format!("{why} and HF_HUB_OFFLINE=1"),
                ));
            }
            None => {
                let info = self.api_repo(repo, revision)?.info().map_err(|e| DataError::Hub {
                    repo: repo.into(),
                    revision: revision.into(),
                    message: format!("repo info: {e}"),
                })?;
                (info.sha, info.siblings.into_iter().map(|s| s.rfilename).collect())
            }
        };
        let names: Vec<String> = match explicit {
            Some(list) => list.to_vec(),
            None => {
                let patterns = self.split_patterns(repo, revision, &commit, &files, config, split)?;
                let mut names: Vec<String> = files
                    .iter()
                    .filter(|f| f.ends_with(".parquet") && patterns.iter().any(|p| glob_match(p, f)))
                    .cloned()
                    .collect();
                names.sort();
                if names.is_empty() {
                    let available = self.available_splits(repo, revision, &commit, &files, config);
                    return Err(DataError::NoSplit {
                        repo: repo.into(),
                        revision: revision.into(),
                        split: split.into(),
                        available,
                    });
                }
                names
            }
        };
        let paths =
            names.iter().map(|n| self.file(repo, revision, &commit, n)).collect::<Result<Vec<_>, _>>()?;
        Ok(ResolvedSplit { commit, names, paths })
    }

    /// One file of the repo at `commit`: from the cache, else downloaded (unless offline).
    pub fn file(&self, repo: &str, revision: &str, commit: &str, name: &str) -> Result<PathBuf, DataError> {
        let p = self.repo_dir(repo).join("snapshots").join(commit).join(name);
        if p.exists() {
            return Ok(p);
        }
        if self.offline {
            return Err(self.not_cached(
                repo,
                revision,
                format!("file `{name}` (commit {commit})"),
                " and HF_HUB_OFFLINE=1",
            ));
        }
        self.api_repo(repo, commit)?.get(name).map_err(|e| DataError::Hub {
            repo: repo.into(),
            revision: revision.into(),
            message: format!("downloading `{name}`: {e}"),
        })
    }

    fn card(&self, repo: &str, revision: &str, commit: &str, files: &[String]) -> Option<String> {
        if !files.iter().any(|f| f == "README.md") {
            return None;
        }
        let p = self.file(repo, revision, commit, "README.md").ok()?;
        std::fs::read_to_string(p).ok()
    }

    fn split_patterns(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
        files: &[String],
        config: Option<&str>,
        split: &str,
    ) -> Result<Vec<String>, DataError> {
        if let Some(card) = self.card(repo, revision, commit, files) {
            let configs = parse_configs(&card);
            if !configs.is_empty() {
                let chosen = match config {
                    Some(c) => configs.get(c).ok_or_else(|| DataError::Hub {
                        repo: repo.into(),
                        revision: revision.into(),
                        message: format!(
                            "no config `{c}` in the dataset card; it has: {}",
                            configs.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    })?,
                    None => configs.values().next().expect("non-empty"),
                };
                return Ok(chosen.get(split).cloned().unwrap_or_default());
            }
        }
        let mut p = vec![format!("data/{split}-*"), format!("{split}-*"), format!("{split}/*")];
        if let Some(c) = config {
            p.insert(0, format!("{c}/{split}-*"));
        }
        Ok(p)
    }

    fn available_splits(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
        files: &[String],
        config: Option<&str>,
    ) -> String {
        if let Some(card) = self.card(repo, revision, commit, files) {
            let configs = parse_configs(&card);
            let c = config.and_then(|c| configs.get(c)).or_else(|| configs.values().next());
            if let Some(c) = c {
                return c.keys().cloned().collect::<Vec<_>>().join(", ");
            }
        }
        files.iter().filter(|f| f.ends_with(".parquet")).cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Repo-relative names of every file under a snapshot folder.
fn list_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}
