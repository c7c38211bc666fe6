//! `marnflow models …`: the registry for model owners.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::Result;
use marnflow_pipeline::lake::Lake;
use marnflow_registry::{Manifest, Registry};
use serde_json::Value;

use crate::cli::ModelsCommand;
use marnflow_engine::evaluate::Evaluation;
use marnflow_engine::training::registry;

fn summary(m: &Manifest) -> String {
    let meta = &m.metadata;
    format!(
        "v{:<4} {:<24} {:<12} {} .. {}  {:>9} samples  parent {}",
        m.version,
        m.created,
        meta.variant,
        meta.data.from,
        meta.data.to,
        meta.training.samples,
        m.parent.map_or("-".into(), |p| format!("v{p}")),
    )
}

/// Saved evaluations of a version, oldest date first; one that cannot be read is an error.
async fn evaluations(lake: &Lake, model: &str, version: u32) -> Result<Vec<Evaluation>> {
    let mut out: Vec<Evaluation> =
        registry(lake).evaluations(model, version).await?.into_iter().map(|(_, e)| e).collect();
    out.sort_by(|a, b| a.date.cmp(&b.date).then(a.slice.cmp(&b.slice)));
    Ok(out)
}

fn metric(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// `models list`: every model with its versions and aliases.
async fn list(registry: &Registry, lake: &Lake, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut all = Vec::new();
    for name in registry.models().await? {
        let versions = registry.versions(&name).await?;
        let aliases = registry.aliases(&name).await?;
        all.push((name, versions, aliases));
    }
    if json {
        let v: Vec<Value> = all
            .iter()
            .map(|(n, vs, al)| {
                serde_json::json!({
                    "model": n,
                    "versions": vs.iter().map(|m| m.version).collect::<Vec<_>>(),
                    "aliases": al.iter().map(|(a, v)| (a.clone(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
        return Ok(());
    }
    if all.is_empty() {
        writeln!(out, "no models in {}: train one with `marnflow train`", lake.folder_url("models"))?;
    }
    for (name, versions, aliases) in all {
        let al: Vec<String> = aliases.iter().map(|(a, v)| format!("{a} → v{v}")).collect();
        writeln!(
            out,
            "{name}  ({} versions; {})",
            versions.len(),
            if al.is_empty() { "no aliases".into() } else { al.join(", ") }
        )?;
        for m in &versions {
            let marks: Vec<&str> = aliases.iter().filter(|(_, v)| *v == m.version).map(|(a, _)| a.as_str()).collect();
            writeln!(
                out,
                "  {}  {}",
                summary(m),
                if marks.is_empty() { String::new() } else { format!("[{}]", marks.join(", ")) }
            )?;
        }
    }
    Ok(())
}

/// `models show`: a version's manifest, aliases and evaluations.
async fn show(registry: &Registry, lake: &Lake, spec: &str, json: bool, out: &mut dyn Write) -> Result<()> {
    let (name, version) = registry.resolve(spec).await?;
    let manifest = registry.manifest(&name, version).await?;
    let evals = evaluations(lake, &name, version).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"manifest": manifest, "evaluations": evals}))?
        )?;
        return Ok(());
    }
    let aliases: Vec<String> =
        registry.aliases(&name).await?.into_iter().filter(|(_, v)| *v == version).map(|(a, _)| a).collect();
    writeln!(
        out,
        "{name}@v{version}  {}",
        if aliases.is_empty() { String::new() } else { format!("[{}]", aliases.join(", ")) }
    )?;
    writeln!(out, "  {}", summary(&manifest))?;
    let meta = &manifest.metadata;
    writeln!(out, "  code: {}", meta.code_version)?;
    writeln!(out, "  warm start: {}", meta.warm_start.as_deref().unwrap_or("-"))?;
    let t = &meta.training;
    writeln!(
        out,
        "  training: {} steps, {:.1}s, {:.0} samples/s, final CTR loss {}",
        t.steps,
        t.seconds,
        t.samples_per_second,
        metric(t.final_ctr_loss)
    )?;
    writeln!(out, "  data:")?;
    for p in &meta.data.partitions {
        writeln!(out, "    {}  {} rows  sha256 {}", p.path, p.rows, p.sha256.get(..16).unwrap_or("?"))?;
    }
    writeln!(out, "  files:")?;
    for f in &manifest.files {
        writeln!(out, "    {:<32} {:>10} bytes  sha256 {}", f.name, f.bytes, &f.sha256[..16.min(f.sha256.len())])?;
    }
    if !evals.is_empty() {
        writeln!(out, "  evaluations:")?;
        for e in evals {
            writeln!(
                out,
                "    {} {:<18} AUC {}  user AUC {}  log loss {:.4}  (Bayes-optimal {})",
                e.date,
                e.slice,
                metric(e.auc),
                metric(e.user_auc),
                e.logloss,
                metric(e.oracle_auc)
            )?;
        }
    }
    Ok(())
}

/// `models diff`: what differs between two versions: data, settings, metrics.
async fn diff(registry: &Registry, lake: &Lake, a: &str, b: &str, out: &mut dyn Write) -> Result<()> {
    let (na, va) = registry.resolve(a).await?;
    let (nb, vb) = registry.resolve(b).await?;
    let (ma, mb) = (registry.manifest(&na, va).await?, registry.manifest(&nb, vb).await?);
    writeln!(out, "--- {na}@v{va}\n+++ {nb}@v{vb}")?;
    let mut lines = Vec::new();
    diff_json("", &serde_json::to_value(&ma.metadata)?, &serde_json::to_value(&mb.metadata)?, &mut lines);
    for l in lines.iter().filter(|l| !l.contains("partitions")) {
        writeln!(out, "{l}")?;
    }
    let parts = |m: &Manifest| -> BTreeSet<(String, String)> {
        m.metadata.data.partitions.iter().map(|p| (p.path.clone(), p.sha256.clone())).collect()
    };
    let (pa, pb) = (parts(&ma), parts(&mb));
    for p in pa.difference(&pb) {
        writeln!(out, "- data {} ({})", p.0, p.1.get(..16).unwrap_or(""))?;
    }
    for p in pb.difference(&pa) {
        writeln!(out, "+ data {} ({})", p.0, p.1.get(..16).unwrap_or(""))?;
    }
    let (ea, eb) = (evaluations(lake, &na, va).await?, evaluations(lake, &nb, vb).await?);
    for x in &ea {
        if let Some(y) = eb.iter().find(|y| y.date == x.date && y.slice == x.slice) {
            writeln!(
                out,
                "  evaluation {} {}: AUC {} → {}, user AUC {} → {}, log loss {:.4} → {:.4}",
                x.date,
                x.slice,
                metric(x.auc),
                metric(y.auc),
                metric(x.user_auc),
                metric(y.user_auc),
                x.logloss,
                y.logloss
            )?;
        }
    }
    Ok(())
}

/// Runs one `models` subcommand, writing to `out`.
pub async fn run(lake: &Lake, command: &ModelsCommand, out: &mut dyn Write) -> Result<()> {
    let registry = registry(lake);
    match command {
        ModelsCommand::List { json } => list(&registry, lake, *json, out).await?,
        ModelsCommand::Show { spec, json } => show(&registry, lake, spec, *json, out).await?,
        ModelsCommand::Diff { a, b } => diff(&registry, lake, a, b, out).await?,
        ModelsCommand::Promote { spec, to, reason } => {
            let (name, version) = registry.resolve(spec).await?;
            let current = registry.alias(&name, to).await?;
            if current == Some(version) {
                writeln!(out, "{name}@{to} already is v{version}")?;
                return Ok(());
            }
            let e = registry.set_alias(&name, to, version, current, reason).await?;
            writeln!(
                out,
                "{name}@{to}: {} → v{} ({})",
                e.previous.map_or("unset".into(), |v| format!("v{v}")),
                e.version,
                e.reason
            )?;
        }
        ModelsCommand::Rollback { model, alias, reason } => {
            let e = registry.rollback(model, alias, reason).await?;
            writeln!(
                out,
                "{model}@{alias}: {} → v{} ({})",
                e.previous.map_or("unset".into(), |v| format!("v{v}")),
                e.version,
                e.reason
            )?;
        }
        ModelsCommand::History { model, alias } => {
            for e in registry.alias_history(model, alias).await? {
                writeln!(
                    out,
                    "{:>4}  {}  {} → v{}  {}",
                    e.seq,
                    e.at,
                    e.previous.map_or("unset".into(), |v| format!("v{v}")),
                    e.version,
                    e.reason
                )?;
            }
        }
    }
    Ok(())
}

/// Lines `- path: a` / `+ path: b` for every leaf that differs.
fn diff_json(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_json(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => {
            out.push(format!("- {path}: {a}"));
            out.push(format!("+ {path}: {b}"));
        }
        _ => {}
    }
}
