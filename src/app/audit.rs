//! `schedwatch audit`: rules 2–5 of CONTRACT section 3 on every job of an inventory or of a
//! Cloud Scheduler location, before anything fails.

use std::io::{self, Write};
use std::process::ExitCode;

use schedwatch_sinks::stdout::stdout;
use schedwatch_sinks::Format;

use super::{inventory_path, load, usage, Runtime};
use crate::cli::AuditArgs;
use crate::correlate::{AuthSource, Inventory, SchedulerApi, SchedulerApiConfig};
use crate::diagnose::Diagnoser;

/// `schedwatch audit`: rules 2–5 on every job; exit 1 when any job has a finding.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let (loaded, config) = load(args.config.as_deref())?;
    let diagnoser = Diagnoser::new(&config.runbook.base_url);
    let (jobs, source) = match (&args.project, &args.location) {
        (Some(project), Some(location)) => {
            // They become an API path: only names Cloud Scheduler could have.
            if !crate::is_project_id(project) {
                return Err(usage(format!(
                    "--project '{}' is not a project id (6 to 30 lower-case letters, digits and hyphens, or DOMAIN:ID)",
                    schedwatch_sinks::escape::line(project)
                )));
            }
            if !crate::is_location(location) {
                return Err(usage(format!(
                    "--location '{}' is not a location such as us-central1",
                    schedwatch_sinks::escape::line(location)
                )));
            }
            let runtime = Runtime::new();
            let api_config = SchedulerApiConfig {
                enabled: true,
                ..config.scheduler_api.clone()
            };
            // An API that refuses or cannot be reached is a set-up problem the user fixes
            // (credentials, roles/cloudscheduler.viewer, the endpoint): exit 2, not 1, which
            // means "findings".
            let mut api = SchedulerApi::connect(&api_config, runtime.handle()).map_err(usage)?;
            let jobs = api.list(project, location).map_err(|e| {
                usage(format!(
                    "cannot list jobs of projects/{project}/locations/{location}: {e}; schedwatch needs roles/cloudscheduler.viewer there"
                ))
            })?;
            (
                jobs.into_iter()
                    .map(std::sync::Arc::new)
                    .collect::<Vec<_>>(),
                AuthSource::SchedulerApi,
            )
        }
        _ => {
            let path = inventory_path(args.jobs.as_deref(), loaded.as_ref(), &config)
                .ok_or_else(|| {
                    usage(if loaded.is_some() {
                        "audit needs --jobs PATH, --project P --location L, or [jobs] inventory in the config"
                    } else {
                        "audit needs --jobs PATH or --project P --location L"
                    })
                })?;
            (
                Inventory::load(&path).map_err(usage)?.sorted(),
                AuthSource::Inventory,
            )
        }
    };
    let mut any = false;
    // Findings are the command's answer: a stdout that was closed is an error (exit 1), not
    // an audit that found nothing.
    let mut out = io::BufWriter::new(stdout());
    print_findings(&mut out, &jobs, &diagnoser, source, args.format, &mut any)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot print findings to stdout: {e}"))?;
    drop(out);
    let with = jobs
        .iter()
        .filter(|j| !diagnoser.audit(j, source).is_empty())
        .count();
    eprintln!(
        "schedwatch audit: {} jobs, {with} with findings",
        jobs.len()
    );
    Ok(if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `audit`'s answer: one line per job (JSON) or a block per finding (text).
fn print_findings(
    out: &mut impl Write,
    jobs: &[std::sync::Arc<crate::correlate::JobConfig>],
    diagnoser: &Diagnoser,
    source: AuthSource,
    format: Format,
    any: &mut bool,
) -> io::Result<()> {
    for job in jobs {
        let findings = diagnoser.audit(job, source);
        *any |= !findings.is_empty();
        let key = &job.key;
        match format {
            Format::Json => {
                let line = serde_json::json!({
                    "job": {"name": key.name(), "project": key.project(), "location": key.location(), "id": key.job_id()},
                    "findings": findings.iter().map(|d| serde_json::json!({
                        "code": d.code.as_str(),
                        "confidence": d.confidence(),
                        "summary": d.summary,
                        "fix": {"gcloud": d.fix.gcloud, "terraform": d.fix.terraform},
                        "runbook_url": diagnoser.runbook_url(d.code),
                    })).collect::<Vec<_>>(),
                });
                writeln!(out, "{line}")?;
            }
            Format::Text => {
                if findings.is_empty() {
                    writeln!(out, "ok       {key}")?;
                }
                for d in &findings {
                    writeln!(
                        out,
                        "FINDING  {key}  {} ({})\n  {}",
                        d.code.as_str(),
                        d.confidence(),
                        schedwatch_sinks::escape::line(&d.summary)
                    )?;
                    for line in schedwatch_sinks::escape::lines(&d.fix.gcloud).lines() {
                        writeln!(out, "    {line}")?;
                    }
                    writeln!(out, "  runbook {}", diagnoser.runbook_url(d.code))?;
                }
            }
        }
    }
    Ok(())
}
