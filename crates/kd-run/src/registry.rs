//! The method registry: the one list of every method crate's factory. Adding a method is a new
//! crate, one line in [`METHODS`], and a recipe (README, "Adding a method").

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use kd_core::plain::PlainTraining;
use kd_core::recipe::Recipe;
use kd_core::registry::{BuildEnv, MethodFactory, MethodSetup, Trainee};
use kd_core::{Classifier, Method};

/// Every method kd-bench runs, in the order `kd list` shows them.
pub static METHODS: &[&dyn MethodFactory] = &[
    &kd_vanilla::factory::FACTORY,
    &kd_multi_teacher::factory::FACTORY,
    &kd_progressive::factory::TAKD,
    &kd_online::factory::DML,
    &kd_online::factory::ONE,
    &kd_progressive::factory::ANNEALING,
    &kd_self::factory::FACTORY,
    &kd_cross_modal::factory::FACTORY,
    &kd_feature::factory::FITNET,
    &kd_feature::factory::AT,
    &kd_feature::factory::SP,
    &kd_feature::factory::CC,
    &kd_feature::factory::VID,
    &kd_feature::factory::RKD,
    &kd_feature::factory::PKT,
    &kd_feature::factory::NST,
    &kd_logit::factory::DKD,
    &kd_logit::factory::DIST,
    &kd_logit::factory::KD_LOGIT_STAND,
    &kd_logit::factory::CTKD,
    &kd_logit::factory::MLKD,
    &kd_feature::crd_method::CRD,
    &kd_feature::review_kd_method::REVIEW_KD,
];

/// The factory of method `name`, or an error listing the known ones.
pub fn factory(name: &str) -> Result<&'static dyn MethodFactory> {
    METHODS.iter().copied().find(|f| f.name() == name).ok_or_else(|| {
        anyhow!(
            "unknown method `{name}` in experiment.method; known: {}",
            METHODS.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// How a task trains its `plain` variant: the method name and the student give the method.
pub type PlainMethod<'a> = dyn Fn(&str, Arc<dyn Classifier>) -> Box<dyn Method> + 'a;

/// A recipe's methods, parsed and validated: each with its factory and typed configuration,
/// and which of them trains each variant. A one-method recipe has one; a comparison
/// (`experiment.methods`) several, each parsing its own `[distill.<method>]`.
pub struct ParsedMethod {
    methods: Vec<(&'static dyn MethodFactory, Box<dyn MethodSetup>)>,
    /// The CSV `method` of `plain` rows: the method of a one-method recipe, `plain` in a
    /// comparison (whose plain variant belongs to none of its methods).
    plain_name: &'static str,
}

impl ParsedMethod {
    /// Parses the recipe's methods and their `[distill]`, and checks that every variant is
    /// offered by exactly one of them.
    pub fn parse(recipe: &Recipe) -> Result<Self> {
        let mut methods = Vec::new();
        for name in recipe.method_names() {
            let factory = factory(name)?;
            let setup =
                factory.parse(&recipe.for_method(name)).with_context(|| format!("method `{name}`"))?;
            methods.push((factory, setup));
        }
        let plain_name = match methods.as_slice() {
            [(only, _)] => only.name(),
            _ => "plain",
        };
        let parsed = ParsedMethod { methods, plain_name };
        for v in &recipe.experiment.variants {
            if v != "plain" {
                parsed.index_of(v)?;
            }
        }
        Ok(parsed)
    }

    /// Which method trains `variant` (never `plain`): exactly one must offer it.
    fn index_of(&self, variant: &str) -> Result<usize> {
        let offering: Vec<usize> =
            (0..self.methods.len()).filter(|&i| self.methods[i].0.variants().contains(&variant)).collect();
        let name = |i: usize| self.methods[i].0.name();
        match offering.as_slice() {
            [i] => Ok(*i),
            [] if self.methods.len() == 1 => bail!(
                "method `{}` has no variant `{variant}`; it has: plain, {}",
                name(0),
                self.methods[0].0.variants().join(", ")
            ),
            [] => bail!(
                "no method of experiment.methods offers variant `{variant}`; they offer: plain, {}",
                self.methods
                    .iter()
                    .map(|(f, _)| format!("{} ({})", f.variants().join(", "), f.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            several => bail!(
                "variant `{variant}` is offered by several methods ({}); a comparison needs distinct variants",
                several.iter().map(|&i| name(i)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// The name of the single method of a one-method recipe, `plain`'s method name otherwise.
    pub fn name(&self) -> &'static str {
        self.plain_name
    }

    /// The method that trains `variant`, as the CSV `method` column names it.
    pub fn method_of(&self, variant: &str) -> &'static str {
        match (variant, self.index_of(variant)) {
            ("plain", _) | (_, Err(_)) => self.plain_name,
            (_, Ok(i)) => self.methods[i].0.name(),
        }
    }

    /// Whether `variant` needs the recipe's pretrained teachers loaded.
    pub fn needs_teachers(&self, variant: &str) -> bool {
        variant != "plain" && self.index_of(variant).is_ok_and(|i| self.methods[i].1.needs_teachers(variant))
    }

    /// Whether `variant`'s batches must carry a strong view ([`kd_core::Batch::strong`]).
    pub fn strong_view(&self, variant: &str) -> bool {
        variant != "plain" && self.index_of(variant).is_ok_and(|i| self.methods[i].1.strong_view(variant))
    }

    /// An error naming the first of `variants` that needs a strong view, for a task (`what`)
    /// that cannot render one.
    pub fn refuse_strong_views(&self, variants: &[String], what: &str) -> Result<()> {
        match variants.iter().find(|v| self.strong_view(v)) {
            Some(v) => bail!(
                "variant `{v}` ({}) trains on a strong (RandAugment) view of every image, which {what} cannot render; \
                 it runs on image tasks only",
                self.method_of(v)
            ),
            None => Ok(()),
        }
    }

    /// Builds `variant` for one run; `plain` is the task's plain training of the student
    /// (`plain` builds it: cross-entropy by default).
    pub fn build(&self, variant: &str, env: &dyn BuildEnv, plain: &PlainMethod) -> Result<Trainee> {
        if variant == "plain" {
            let student = env.student()?;
            let method = plain(self.plain_name, student.model.clone());
            return Ok(Trainee::student(method, student));
        }
        let (_, setup) = &self.methods[self.index_of(variant)?];
        setup.build(variant, env).with_context(|| format!("building variant `{variant}`"))
    }
}

/// The image task's `plain`: cross-entropy on the labels, no label smoothing.
pub fn cross_entropy_plain(
    name: &str,
    model: std::sync::Arc<dyn kd_core::Classifier>,
) -> Box<dyn kd_core::Method> {
    Box::new(PlainTraining::new(name, model, 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kd_core::recipe::RecipeFile;

    fn recipe(methods: &str, variants: &str) -> Recipe {
        let text = format!(
            r#"[experiment]
name = "t"
methods = {methods}
variants = {variants}
seeds = [0]

[data]
hub = "uoft-cs/cifar100"
train_split = "train"
eval_split = "test"
image_column = "img"
label_column = "fine_label"
num_classes = 100

[teacher]
arch = "resnet56b-stem-bias"
checkpoint = {{ path = "t.pth", sha256 = "003ab840c90fed49e71fd1fca6167598a57c3b62d34afa00ceaebe1aba5a535b" }}

[student]
arch = "resnet20b"

[train]
epochs = 1
batch_size = 8
optimizer = {{ kind = "sgd", lr = 0.05 }}
lr_schedule = {{ kind = "constant" }}

{vanilla}{at}"#,
            vanilla = if methods.contains("vanilla") {
                "[distill.vanilla]\ntemperature = 4.0\nalpha = 0.9\n"
            } else {
                ""
            },
            at = if methods.contains("\"at\"") { "[distill.at]\nbeta = 10.0\n" } else { "" },
        );
        RecipeFile::parse("benchmarks/t.toml".into(), text).unwrap().resolve(None).unwrap()
    }

    fn refusal(methods: &str, variants: &str) -> String {
        match ParsedMethod::parse(&recipe(methods, variants)) {
            Ok(_) => panic!("accepted {methods} / {variants}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn each_variant_of_a_comparison_is_trained_by_the_method_offering_it() {
        let p = ParsedMethod::parse(&recipe(
            r#"["vanilla", "at", "fitnet"]"#,
            r#"["plain", "kd", "at", "fitnet"]"#,
        ))
        .unwrap();
        assert_eq!(
            ["plain", "kd", "at", "fitnet"].map(|v| p.method_of(v)),
            ["plain", "vanilla", "at", "fitnet"]
        );
        assert!(!p.needs_teachers("plain") && p.needs_teachers("kd") && p.needs_teachers("at"));
    }

    #[test]
    fn a_variant_no_method_or_several_methods_offer_is_refused() {
        let e = refusal(r#"["vanilla", "at"]"#, r#"["plain", "sp"]"#);
        assert!(
            e.contains("no method of experiment.methods offers variant `sp`") && e.contains("at (at)"),
            "{e}"
        );
        // Two methods offering one variant (no registered pair does yet: vanilla twice).
        let r = recipe(r#"["vanilla"]"#, r#"["plain", "kd"]"#);
        let setup = || kd_vanilla::factory::FACTORY.parse(&r.for_method("vanilla")).unwrap();
        let twice = ParsedMethod {
            methods: vec![(&kd_vanilla::factory::FACTORY, setup()), (&kd_vanilla::factory::FACTORY, setup())],
            plain_name: "plain",
        };
        let e = format!("{:#}", twice.index_of("kd").unwrap_err());
        assert!(e.contains("several methods (vanilla, vanilla)"), "{e}");
        let e = refusal(r#"["vanilla", "zzz"]"#, r#"["plain", "kd"]"#);
        assert!(e.contains("unknown method `zzz`"), "{e}");
    }

    #[test]
    fn only_mlkd_asks_for_strong_views_and_a_task_without_them_refuses_it_by_name() {
        let p = ParsedMethod::parse(&recipe(r#"["vanilla", "mlkd"]"#, r#"["plain", "kd", "mlkd"]"#)).unwrap();
        assert_eq!(["plain", "kd", "mlkd"].map(|v| p.strong_view(v)), [false, false, true]);
        let all = |vs: &[&str]| vs.iter().map(|v| v.to_string()).collect::<Vec<_>>();
        p.refuse_strong_views(&all(&["plain", "kd"]), "a text task").unwrap();
        let e = format!("{:#}", p.refuse_strong_views(&all(&["plain", "mlkd"]), "a text task").unwrap_err());
        assert!(e.contains("variant `mlkd` (mlkd)") && e.contains("a text task cannot render"), "{e}");
    }

    #[test]
    fn each_method_parses_its_own_distill_table() {
        // AT's β = 10 parses; the same key under a method that has no `beta` is refused by it.
        ParsedMethod::parse(&recipe(r#"["at"]"#, r#"["plain", "at"]"#)).unwrap();
        let mut r = recipe(r#"["vanilla", "at"]"#, r#"["plain", "kd", "at"]"#);
        let at = r.distill.remove("at").unwrap();
        r.distill.insert("vanilla".into(), at);
        let e = match ParsedMethod::parse(&r) {
            Ok(_) => panic!("vanilla accepted `beta`"),
            Err(e) => format!("{e:#}"),
        };
        assert!(e.contains("method `vanilla`") && e.contains("beta"), "{e}");
    }
}
