//! `kd cite <experiment>`: BibTeX for a configuration (experiment, profile, full config hash,
//! kd-bench version and commit, repository URL, date), followed by the entries of
//! `papers/references.bib` that the recipe's `experiment.cite` lists, copied verbatim.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kd_core::hash::short;
use kd_core::results::{read_rows, ResultRow};

use crate::report::config_with_prefix;
use kd_run::env;
use kd_run::reproduce::{load_recipe_file, recipe_hash, Paths};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Experiment name: benchmarks/<experiment>.toml.
    pub experiment: String,
    /// Profile whose configuration is cited.
    #[arg(long, default_value = kd_core::recipe::DEFAULT_PROFILE)]
    pub profile: String,
    /// Folder of recipes (default: <root>/benchmarks).
    #[arg(long)]
    pub recipes: Option<PathBuf>,
    /// The bibliography (default: <root>/papers/references.bib).
    #[arg(long)]
    pub bib: Option<PathBuf>,
    /// Folder of results CSVs (default: <root>/results).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Cite the configuration of the results rows whose hash starts with this (e.g. results made
    /// before the recipe changed) instead of the recipe's current one.
    #[arg(long)]
    pub config: Option<String>,
}

/// One entry of a .bib file, as written there.
#[derive(Debug, Clone, PartialEq)]
pub struct BibEntry {
    /// `article`, `inproceedings`, `misc`, … (lower-cased).
    pub kind: String,
    pub key: String,
    /// The entry's text from `@` to its closing brace.
    pub text: String,
    /// 1-based line of the `@`.
    pub line: usize,
}

/// Parses the entries of a .bib file by brace matching. `@comment`, `@string` and `@preamble`
/// blocks are skipped; text between entries is ignored, as BibTeX does.
pub fn parse_bib(path: &Path, text: &str) -> Result<Vec<BibEntry>> {
    let bytes = text.as_bytes();
    let line_of = |pos: usize| text[..pos].matches('\n').count() + 1;
    let mut entries: Vec<BibEntry> = Vec::new();
    let mut pos = 0;
    while let Some(at) = text[pos..].find('@').map(|i| pos + i) {
        let kind_end = text[at + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|i| at + 1 + i)
            .unwrap_or(text.len());
        let kind = text[at + 1..kind_end].to_ascii_lowercase();
        if kind.is_empty() {
            // A stray `@` outside any entry (e.g. in a comment line): not an entry.
            pos = at + 1;
            continue;
        }
        let open = text[kind_end..].find(|c: char| !c.is_whitespace()).map(|i| kind_end + i);
        let (open, close_char) = match open.map(|o| (o, bytes[o])) {
            Some((o, b'{')) => (o, b'}'),
            Some((o, b'(')) => (o, b')'),
            _ => bail!("{}:{}: `@{kind}` is not followed by `{{`", path.display(), line_of(at)),
        };
        // Match braces; the entry ends at the delimiter that closes `open`.
        let mut depth = 0usize;
        let mut end = None;
        for (i, &b) in bytes.iter().enumerate().skip(open + 1) {
            match b {
                b'{' => depth += 1,
                b'}' if depth > 0 => depth -= 1,
                c if c == close_char && depth == 0 => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            bail!("{}:{}: the entry starting here has unbalanced braces", path.display(), line_of(at));
        };
        pos = end + 1;
        if matches!(kind.as_str(), "comment" | "string" | "preamble") {
            continue;
        }
        let body = &text[open + 1..end];
        let Some(comma) = body.find(',') else {
            bail!("{}:{}: entry `@{kind}` has no key", path.display(), line_of(at));
        };
        let key = body[..comma].trim().to_string();
        if key.is_empty() {
            bail!("{}:{}: entry `@{kind}` has an empty key", path.display(), line_of(at));
        }
        if let Some(prev) = entries.iter().find(|e| e.key == key) {
            bail!("{}:{}: key `{key}` is already defined at line {}", path.display(), line_of(at), prev.line);
        }
        entries.push(BibEntry { kind, key, text: text[at..=end].to_string(), line: line_of(at) });
    }
    Ok(entries)
}

pub fn load_bib(path: &Path) -> Result<Vec<BibEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_bib(path, &text)
}

/// The entries for `keys`, in that order; an unknown key is an error naming it.
pub fn resolve_keys<'a>(
    bib: &'a [BibEntry],
    keys: &[String],
    bib_path: &Path,
    who: &str,
) -> Result<Vec<&'a BibEntry>> {
    let missing: Vec<&str> =
        keys.iter().filter(|k| !bib.iter().any(|e| &e.key == *k)).map(String::as_str).collect();
    if !missing.is_empty() {
        bail!(
            "{who} cites {}, not in {} (keys there: {})",
            missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
            bib_path.display(),
            bib.iter().map(|e| e.key.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(keys.iter().filter_map(|k| bib.iter().find(|e| &e.key == k)).collect())
}

/// What the configuration entry records.
#[derive(Debug, Clone)]
pub struct ConfigCitation {
    pub experiment: String,
    pub title: String,
    pub profile: String,
    pub config_hash: String,
    pub version: String,
    pub git_commit: String,
    pub repository: String,
    /// YYYY-MM-DD.
    pub date: String,
    /// Commits that produced the results rows of this configuration, if any.
    pub result_commits: Vec<String>,
}

/// Braces and backslashes would break the entry; BibTeX needs nothing else escaped inside `{}`.
fn bib_safe(s: &str) -> String {
    s.replace(['{', '}', '\\'], "").replace("->", "$\\rightarrow$")
}

impl ConfigCitation {
    pub fn key(&self) -> String {
        format!("kdbench:{}:{}:{}", self.experiment, self.profile, short(&self.config_hash))
    }

    pub fn to_bibtex(&self) -> String {
        let year = self.date.get(..4).unwrap_or("");
        let commit = if self.git_commit.is_empty() { "unknown".to_string() } else { self.git_commit.clone() };
        let mut note =
            format!("kd-bench {}, commit {}, configuration hash {}", self.version, commit, self.config_hash);
        if !self.result_commits.is_empty() {
            note.push_str(&format!("; results produced at commit {}", self.result_commits.join(", ")));
        }
        let fields = [
            (
                "title",
                format!("{{kd-bench}}: {} (profile {})", bib_safe(&self.title), bib_safe(&self.profile)),
            ),
            ("author", "{kd-bench contributors}".to_string()),
            ("howpublished", format!("\\url{{{}}}", self.repository)),
            ("year", year.to_string()),
            ("note", bib_safe(&note).replace('_', "\\_")),
            ("urldate", self.date.clone()),
        ];
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("@misc{{{},\n", self.key());
        for (i, (k, v)) in fields.iter().enumerate() {
            let sep = if i + 1 < fields.len() { "," } else { "" };
            out.push_str(&format!("  {k:<width$} = {{{v}}}{sep}\n"));
        }
        out.push_str("}\n");
        out
    }
}

/// The full `kd cite` text for `experiment` under `profile`; `config` (a hash prefix) picks the
/// configuration of existing results rows instead of the recipe's current one. The second value
/// is a warning for the user, if any.
pub fn cite(
    paths: &Paths,
    bib_path: &Path,
    experiment: &str,
    profile: &str,
    config: Option<&str>,
) -> Result<(String, Option<String>)> {
    let file = load_recipe_file(&paths.recipes, experiment)?;
    let recipe = file.resolve(Some(profile))?;
    let current = recipe_hash(&recipe)?;
    let bib = load_bib(bib_path)?;
    let cited =
        resolve_keys(&bib, &recipe.experiment.cite, bib_path, &format!("recipe {}", file.path.display()))?;
    let csv = paths.results.join(format!("{}.csv", recipe.experiment.name));
    let mut rows = if csv.exists() { read_rows(&csv)? } else { Vec::new() };
    // Rows written under this experiment's configurations' old hashes are theirs.
    let index = crate::compare::ConfigIndex::load(
        std::slice::from_ref(&csv),
        Some(&paths.recipes),
        std::slice::from_ref(&recipe.experiment.name),
    )?;
    index.rename_rows(&mut rows);
    let in_profile: Vec<&ResultRow> = rows.iter().filter(|r| r.profile == profile).collect();
    let mut warning = None;
    let hash = match config {
        Some(prefix) => config_with_prefix(&in_profile, prefix, index.aliases())
            .with_context(|| format!("{} (profile {profile})", csv.display()))?,
        None => {
            let mut others: Vec<&str> = in_profile.iter().map(|r| short(&r.config_hash)).collect();
            others.sort();
            others.dedup();
            if !others.is_empty() && !in_profile.iter().any(|r| r.config_hash == current) {
                warning = Some(format!(
                    "no rows in {} have the recipe's current config {}; they were made with {}: cite those with --config <hash>",
                    csv.display(),
                    short(&current),
                    others.join(", ")
                ));
            }
            current
        }
    };
    let mut result_commits: Vec<String> =
        in_profile.iter().filter(|r| r.config_hash == hash).map(|r| r.git_commit.clone()).collect();
    result_commits.sort();
    result_commits.dedup();
    result_commits.retain(|c| !c.is_empty());
    let citation = ConfigCitation {
        experiment: recipe.experiment.name.clone(),
        title: if recipe.experiment.title.is_empty() {
            recipe.experiment.name.clone()
        } else {
            recipe.experiment.title.clone()
        },
        profile: profile.to_string(),
        config_hash: hash,
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: env::git_commit(&paths.root),
        repository: env!("CARGO_PKG_REPOSITORY").to_string(),
        date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        result_commits,
    };
    let mut out = format!(
        "% kd-bench configuration {} (profile {}) and the papers it reproduces.\n",
        citation.experiment, citation.profile
    );
    out.push_str(&citation.to_bibtex());
    for e in cited {
        out.push('\n');
        out.push_str(&e.text);
        out.push('\n');
    }
    Ok((out, warning))
}

pub fn run(args: Args) -> Result<()> {
    let paths = Paths::for_profile(args.recipes.clone(), args.results.clone(), None, &args.profile)?;
    let bib = args.bib.clone().unwrap_or_else(|| paths.root.join("papers/references.bib"));
    let (text, warning) = cite(&paths, &bib, &args.experiment, &args.profile, args.config.as_deref())?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    print!("{text}");
    Ok(())
}
