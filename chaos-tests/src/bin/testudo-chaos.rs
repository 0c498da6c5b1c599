//! `testudo-chaos`: runs the failure drills against real replica processes and prints a
//! summary table (Markdown). Exits non-zero if any drill failed a check.

use std::time::Duration;

use anyhow::Context;
use chaos_tests::drills::{self, Settings};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Failure drills against real testudo-server replicas and agents")]
struct Args {
    /// Keep injecting faults for at least this long in all (e.g. 10m, 30m): each drill
    /// selected gets an equal share as its minimum.
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
    let selected: Vec<&drills::Drill> =
        drills::ALL.iter().filter(|d| args.drills.is_empty() || args.drills.iter().any(|n| n == d.name)).collect();
    let share = args.duration / u32::try_from(selected.len().max(1)).unwrap_or(u32::MAX);
    let settings = Settings { iterations: args.iterations, duration: share };
    let began = std::time::Instant::now();
    let mut reports = Vec::new();
    for drill in selected {
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
    let leader_kills: usize = reports.iter().map(|r| r.leader_kills).sum();
    let table = format!(
        "{}\n{} drills in {:.1} min, {leader_kills} leader kills in all.\n",
        drills::table(&reports),
        reports.len(),
        began.elapsed().as_secs_f64() / 60.0
    );
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
