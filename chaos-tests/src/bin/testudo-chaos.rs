//! `testudo-chaos`: runs the failure drills against real replica processes and prints a
//! summary table (Markdown). Exits non-zero if any drill failed a check.

use std::time::Duration;

use anyhow::Context;
use chaos_tests::drills::{self, Settings};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Failure drills against real testudo-server replicas and agents")]
struct Args {
    /// Keep each drill injecting faults for at least this long (e.g. 60s, 10m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    duration: Duration,
    /// Fault rounds per drill, at least.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Run only these drills (by name); all by default.
    #[arg(long = "drill")]
    drills: Vec<String>,
    /// Also write the table to this file.
    #[arg(long)]
    table: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let known: Vec<&str> = drills::ALL.iter().map(|d| d.name).collect();
    if let Some(unknown) = args.drills.iter().find(|d| !known.contains(&d.as_str())) {
        anyhow::bail!("no drill named {unknown:?}; the drills are {}", known.join(", "));
    }
    let settings = Settings { iterations: args.iterations, duration: args.duration };
    let mut reports = Vec::new();
    for drill in drills::ALL.iter().filter(|d| args.drills.is_empty() || args.drills.iter().any(|n| n == d.name)) {
        eprintln!(
            "== {}: {} ({} rounds at least, {:?} at least)",
            drill.name, drill.about, settings.iterations, settings.duration
        );
        let report = drills::run_caught(drill, &settings);
        eprintln!("   {}", report.summary);
        for failure in &report.failures {
            eprintln!("   FAILED: {failure}");
        }
        reports.push(report);
    }
    let table = drills::table(&reports);
    println!("{table}");
    if let Some(path) = &args.table {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: Vec<&str> = reports.iter().filter(|r| !r.passed()).map(|r| r.drill).collect();
    if !failed.is_empty() {
        anyhow::bail!("drills failed: {}", failed.join(", "));
    }
    Ok(())
}
