//! `kd list`: the experiments, their methods, data, models and papers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kd_core::recipe::RecipeFile;

use kd_run::reproduce::Paths;

/// The profile `kd reproduce` runs when none is given: what `kd list` describes.
const DEFAULT_PROFILE: &str = "cpu";

/// Columns sized to their widest cell; the last (papers) is left unpadded.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// The recipe files of the recipes folder, sorted.
fn recipe_files(paths: &Paths) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&paths.recipes)
        .with_context(|| format!("reading {}", paths.recipes.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// `kd list --hashes`: each profile's configuration hash and its v1 name, as CSV
/// (`benchmarks/pins/config-hashes.csv` pins them).
fn print_hashes(paths: &Paths) -> Result<()> {
    println!("experiment,profile,config_hash,v1_config_hash");
    for path in recipe_files(paths)? {
        let file = RecipeFile::load(&path)?;
        for profile in file.profiles.keys() {
            let r = file.resolve(Some(profile)).with_context(|| format!("recipe {}", path.display()))?;
            let current = kd_core::recipe_hash::recipe_hash(&r)?;
            let v1 = kd_core::recipe_hash::legacy_recipe_hash(&r)?;
            println!("{},{profile},{current},{v1}", r.experiment.name);
        }
    }
    Ok(())
}

pub fn run(recipes: Option<PathBuf>, hashes: bool) -> Result<()> {
    let paths = Paths::from_args(recipes, None, None)?;
    if hashes {
        return print_hashes(&paths);
    }
    let files = recipe_files(&paths)?;
    let mut rows =
        vec![["experiment", "method", "variants", "dataset", "teacher -> student", "profiles", "papers"]
            .map(String::from)
            .to_vec()];
    for path in files {
        let file = RecipeFile::load(&path)?;
        // The models and data of the profile a plain `kd reproduce` runs (the base if it has none).
        let profile = file.profiles.contains_key(DEFAULT_PROFILE).then_some(DEFAULT_PROFILE);
        let r = file.resolve(profile).with_context(|| format!("recipe {}", path.display()))?;
        let models = format!("{} -> {}", kd_run::reproduce::teacher_archs(&r), r.student.arch);
        // A comparison lists many methods and variants: their counts keep the table readable.
        let (methods, variants) = match r.method_names().as_slice() {
            [one] => (one.to_string(), r.experiment.variants.join(",")),
            many => (format!("{} methods", many.len()), format!("{} variants", r.experiment.variants.len())),
        };
        let profiles = file.profiles.keys().cloned().collect::<Vec<_>>().join(",");
        rows.push(vec![
            r.experiment.name.clone(),
            methods,
            variants,
            r.data.hub.clone(),
            models,
            profiles,
            r.experiment.cite.join(", "),
        ]);
    }
    print_table(&rows);
    println!("(models and data of each recipe's `{DEFAULT_PROFILE}` profile, the one `kd reproduce` runs by default)");
    Ok(())
}
