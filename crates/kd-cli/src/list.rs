//! `kd list`: the experiments, their methods, data, models and papers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kd_core::recipe::RecipeFile;

use kd_run::reproduce::Paths;

pub fn run(recipes: Option<PathBuf>) -> Result<()> {
    let paths = Paths::from_args(recipes, None, None)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&paths.recipes)
        .with_context(|| format!("reading {}", paths.recipes.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    println!(
        "{:<28} {:<10} {:<14} {:<22} {:<22} papers",
        "experiment", "method", "variants", "dataset", "teacher -> student"
    );
    for path in files {
        let file = RecipeFile::load(&path)?;
        let r = file.resolve(None)?;
        let models = format!("{} -> {}", kd_run::reproduce::teacher_archs(&r), r.student.arch);
        // A comparison lists many methods and variants: their counts keep the table readable.
        let (methods, variants) = match r.method_names().as_slice() {
            [one] => (one.to_string(), r.experiment.variants.join(",")),
            many => (format!("{} methods", many.len()), format!("{} variants", r.experiment.variants.len())),
        };
        println!(
            "{:<28} {:<10} {:<14} {:<22} {:<22} {}",
            r.experiment.name,
            methods,
            variants,
            r.data.hub,
            models,
            r.experiment.cite.join(", ")
        );
        println!("{:<28} profiles: {}", "", file.profiles.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    Ok(())
}
