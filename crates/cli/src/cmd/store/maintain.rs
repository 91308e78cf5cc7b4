//! Maintenance commands: `pack`, `import`, `delete`, `repack`, `validate`, `clean`,
//! `rebuild-index`, `backup`, `import-store`, `import-dos`. Each takes the store's maintenance
//! lock for its whole run (failing at once unless `--wait`) and draws its phases as bars.

use std::io::Write;
use std::process::ExitCode;

use basin_store::{CleanOptions, PackOptions, PackSelection, RepackOptions, Source};
use serde_json::json;

use super::output::{self, human_bytes, json_line, stdout_result};
use super::{
    open_store, parse, walk, BackupArgs, CleanArgs, DeleteArgs, ImportArgs, ImportFromArgs,
    LockArgs, PackArgs, RepackArgs, EXIT_NO,
};
use crate::cmd::Global;
use crate::progress::StoreProgress;

pub fn pack(args: PackArgs, global: &Global) -> anyhow::Result<ExitCode> {
    // Read the key list before taking the lock: a bad list should not block other maintainers.
    let selection = match (&args.prefix, &args.keys_from) {
        (Some(prefix), _) => PackSelection::Prefix(prefix.clone()),
        (None, Some(path)) => PackSelection::Keys(parse::keys_from(path)?),
        (None, None) => PackSelection::All,
    };
    let opts = PackOptions {
        compression: args.compression,
        commit_bytes: None,
        cached_bytes: None,
    };
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.pack_loose(&selection, &opts, &progress)?;
    drop(progress);
    output::report("packed", &report, global.json)?;
    warn_skipped(
        &report.skipped,
        "loose files could not be read and were left for the next pack",
        global,
    );
    Ok(problems_found(
        &report.corrupt,
        "loose files do not match their key and were left in place; run `basin validate`",
        global,
    ))
}

pub fn import(args: ImportArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let walk = walk::regular_files(&args.paths)?;
    if !global.quiet {
        for path in &walk.skipped {
            eprintln!(
                "basin: skipped {} (not a regular file or folder)",
                path.display()
            );
        }
    }
    // Sources are hashed as they are written.
    let opts = PackOptions {
        compression: args.compression,
        commit_bytes: None,
        cached_bytes: None,
    };
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let mut sources = walk.files.iter().map(|path| Ok(Source::File(path.clone())));
    let keys = maintenance.write_packed(&mut sources, &opts, &progress)?;
    drop(progress);
    anyhow::ensure!(
        keys.len() == walk.files.len(),
        "the store returned {} keys for {} files; nothing is wrong on disk, but keys cannot be matched to paths",
        keys.len(),
        walk.files.len()
    );
    let mut out = output::stdout();
    for (key, path) in keys.iter().zip(&walk.files) {
        if global.json {
            json_line(&mut out, &json!({ "key": key.to_hex(), "path": path }))?;
        } else {
            stdout_result(writeln!(out, "{key}  {}", path.display()))?;
        }
    }
    stdout_result(out.flush())?;
    Ok(ExitCode::SUCCESS)
}

pub fn delete(args: DeleteArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let existed = maintenance.delete(&args.keys)?;
    let existed: std::collections::HashSet<_> = existed.into_iter().collect();
    let mut out = output::stdout();
    for key in &args.keys {
        let deleted = existed.contains(key);
        if global.json {
            json_line(
                &mut out,
                &json!({ "key": key.to_hex(), "deleted": deleted }),
            )?;
        } else {
            // Deleting an absent object is not an error: the store ends in the state asked for.
            stdout_result(writeln!(
                out,
                "{key} {}",
                if deleted { "deleted" } else { "absent" }
            ))?;
        }
    }
    stdout_result(out.flush())?;
    Ok(ExitCode::SUCCESS)
}

pub fn repack(args: RepackArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let opts = RepackOptions {
        all: args.all,
        garbage_ratio_min: args.garbage_min,
        compression: args.compression,
        bypass_page_cache: !args.through_page_cache,
        small_pack_bytes_max: args.merge_below,
        commit_bytes: None,
        stage_rows_min: None,
    };
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.repack(&opts, &progress)?;
    drop(progress);
    output::report("repacked", &report, global.json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn validate(args: LockArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.validate(&progress)?;
    drop(progress);
    if global.json {
        output::json_document(&report)?;
    } else {
        let mut out = output::stdout();
        for problem in &report.problems {
            stdout_result(writeln!(out, "{problem}"))?;
        }
        stdout_result(out.flush())?;
        if !global.quiet {
            eprintln!(
                "validated {} ({}): {}",
                count(report.objects_checked, "object", "objects"),
                human_bytes(report.bytes_checked),
                match report.problems.len() {
                    0 => "no problems".to_string(),
                    n => count(n as u64, "problem", "problems"),
                }
            );
        }
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO)
    })
}

pub fn clean(args: CleanArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let opts = CleanOptions {
        vacuum: !args.no_vacuum,
        ..CleanOptions::default()
    };
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.clean(&opts, &progress)?;
    drop(progress);
    output::report("cleaned", &report, global.json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn rebuild_index(args: LockArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.rebuild_index(&progress)?;
    drop(progress);
    output::report("rebuilt index", &report, global.json)?;
    Ok(problems_found(
        &report.unreadable_packs,
        "packs could not be read; their objects are not in the index",
        global,
    ))
}

pub fn backup(args: BackupArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.backup(&args.dest, &progress)?;
    drop(progress);
    output::report(
        &format!("backed up to {}", args.dest.display()),
        &report,
        global.json,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn import_store(args: ImportFromArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.import_store(&args.src, &progress)?;
    drop(progress);
    output::report(
        &format!("imported store {}", args.src.display()),
        &report,
        global.json,
    )?;
    Ok(problems_found(
        &report.corrupt,
        "source objects do not match their key and were not imported",
        global,
    ))
}

pub fn import_dos(args: ImportFromArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let maintenance = store.maintenance(args.lock.lock_wait())?;
    let progress = StoreProgress::new(global.quiet);
    let report = maintenance.import_dos(&args.src, &progress)?;
    drop(progress);
    output::report(
        &format!("imported disk-objectstore container {}", args.src.display()),
        &report,
        global.json,
    )?;
    Ok(problems_found(
        &report.corrupt,
        "source objects do not match their key and were not imported",
        global,
    ))
}

/// Exit code for a finished operation that met damaged data: the listed items go to stderr (they
/// are already in the `--json` report) and the exit code is 1, as for `validate`.
fn problems_found(items: &[String], what: &str, global: &Global) -> ExitCode {
    if items.is_empty() {
        return ExitCode::SUCCESS;
    }
    if !global.json {
        eprintln!("basin: {} {what}:", items.len());
        for item in items {
            eprintln!("  {item}");
        }
    }
    ExitCode::from(EXIT_NO)
}

/// Notes items an operation passed over without it being a problem (they are retried next time).
fn warn_skipped(items: &[String], what: &str, global: &Global) {
    if !items.is_empty() && !global.quiet && !global.json {
        eprintln!("basin: {} {what}:", items.len());
        for item in items {
            eprintln!("  {item}");
        }
    }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
