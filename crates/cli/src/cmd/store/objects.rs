//! Commands that create a store and write or read objects: `init`, `put`, `get`, `has`, `meta`,
//! `ls`, `stats`. None of them takes the maintenance lock: the library lets them run at any time.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use basin_store::{InitOptions, Key, Location, ObjectMeta, ObjectReader, Store};
use serde_json::json;

use super::output::{self, human_bytes, json_line, stdout_result};
use super::{open_store, store_dir, GetArgs, InitArgs, KeysArgs, PutArgs, EXIT_NO};
use crate::cmd::Global;

/// Copy buffer for `get`: large enough that syscalls do not dominate, small enough to ignore.
const COPY_BUFFER_BYTES: usize = 1 << 20;
/// `get` to stdout verifies objects up to this size completely before writing any byte.
const STDOUT_VERIFIED_BYTES_MAX: u64 = 16 << 20;

pub fn init(args: InitArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let dir = match &args.dir {
        Some(dir) => dir.as_path(),
        None => store_dir(global)?,
    };
    let opts = InitOptions {
        hash: args.hash,
        loose_prefix_len: args.loose_prefix_len,
        pack_size_target_bytes: args.pack_size_target,
        compression: args.compression,
    };
    let store = Store::init(dir, &opts)?;
    let config = store.config();
    if global.json {
        output::json_document(&json!({
            "path": store.path(),
            "format_version": config.format_version,
            "container_id": config.container_id,
            "hash": config.hash.to_string(),
            "loose_prefix_len": config.loose_prefix_len,
            "pack_size_target_bytes": config.pack_size_target_bytes,
            "compression": config.compression.to_string(),
        }))?;
    } else if !global.quiet {
        eprintln!(
            "created store {} (hash {}, compression {}, pack size target {})",
            store.path().display(),
            config.hash,
            config.compression,
            human_bytes(config.pack_size_target_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where one object of `put` comes from.
enum PutSource {
    Stdin,
    File(PathBuf),
}

impl PutSource {
    fn label(&self) -> String {
        match self {
            PutSource::Stdin => "-".to_string(),
            PutSource::File(path) => path.display().to_string(),
        }
    }

    fn open(&self) -> anyhow::Result<Box<dyn Read>> {
        Ok(match self {
            PutSource::Stdin => Box::new(io::stdin().lock()),
            PutSource::File(path) => {
                let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
                let is_dir = file
                    .metadata()
                    .with_context(|| format!("read {}", path.display()))?
                    .is_dir();
                anyhow::ensure!(
                    !is_dir,
                    "{} is a folder; `basin import` stores trees",
                    path.display()
                );
                Box::new(file)
            }
        })
    }
}

pub fn put(args: PutArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let sources: Vec<PutSource> = if args.files.is_empty() {
        vec![PutSource::Stdin]
    } else {
        args.files
            .into_iter()
            .map(|f| {
                if f == Path::new("-") {
                    PutSource::Stdin
                } else {
                    PutSource::File(f)
                }
            })
            .collect()
    };
    if sources
        .iter()
        .filter(|s| matches!(s, PutSource::Stdin))
        .count()
        > 1
    {
        anyhow::bail!("stdin ('-') can be given only once");
    }
    if sources.iter().any(|s| matches!(s, PutSource::Stdin))
        && io::stdin().is_terminal()
        && !global.quiet
    {
        eprintln!("basin: reading an object from the terminal; end it with Ctrl-D");
    }
    let store = open_store(global)?;
    let mut out = output::stdout();
    let print = |out: &mut io::BufWriter<_>, key: Key, source: &PutSource| -> anyhow::Result<()> {
        if global.json {
            json_line(
                out,
                &json!({ "key": key.to_hex(), "source": source.label() }),
            )
        } else {
            stdout_result(writeln!(out, "{key}"))
        }
    };
    if args.batch {
        let mut batch = store.batch()?;
        for source in &sources {
            let mut reader = source.open()?;
            batch
                .put_reader(&mut reader)
                .with_context(|| format!("store {}", source.label()))?;
        }
        // Nothing is durable before commit, so no key is printed before it.
        let keys = batch.commit()?;
        for (key, source) in keys.into_iter().zip(&sources) {
            print(&mut out, key, source)?;
        }
    } else {
        for source in &sources {
            let mut reader = source.open()?;
            let key = store
                .put_reader(&mut reader)
                .with_context(|| format!("store {}", source.label()))?;
            print(&mut out, key, source)?;
            // Each key is shown as soon as its object is durable, so an interrupted run says
            // exactly what was stored.
            stdout_result(out.flush())?;
        }
    }
    stdout_result(out.flush())?;
    Ok(ExitCode::SUCCESS)
}

pub fn get(args: GetArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let mut reader = store.open_object(&args.key)?;
    // `-o -` is stdout, as in most tools.
    match args
        .output
        .as_deref()
        .filter(|path| *path != Path::new("-"))
    {
        None if reader.size() <= STDOUT_VERIFIED_BYTES_MAX => {
            // Read (and so verify) the whole object before writing its first byte: a pipe
            // consumer cannot take back bytes that turn out to be damaged.
            let mut content = Vec::with_capacity(reader.size() as usize);
            if let Err(e) = reader.read_to_end(&mut content) {
                return Err(reader.explain(e).into());
            }
            let mut out = io::stdout().lock();
            stdout_result(out.write_all(&content).and_then(|()| out.flush()))?;
        }
        None => {
            // Too big to hold: stream it. The reader verifies as it goes and fails at the latest
            // at the end, so a damaged object still ends in an error and exit code 2.
            let mut out = io::stdout().lock();
            copy_object(&mut reader, &mut out, None)?;
            stdout_result(out.flush())?;
        }
        Some(path) => write_file_atomically(path, &mut reader)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the object into a temporary file beside `path`, syncs it and renames it over `path`,
/// so `path` is either untouched or holds the complete, verified object.
fn write_file_atomically(path: &Path, reader: &mut ObjectReader) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".basin-get-")
        .tempfile_in(parent)
        .with_context(|| format!("create a temporary file in {}", parent.display()))?;
    copy_object(reader, temp.as_file_mut(), Some(path))?;
    temp.as_file()
        .sync_all()
        .with_context(|| format!("sync {}", temp.path().display()))?;
    temp.persist(path).map_err(|e| {
        anyhow::Error::new(e.error).context(format!("rename into {}", path.display()))
    })?;
    Ok(())
}

/// Streams an object in bounded memory. Read errors (the library verifies content as it
/// streams) stay distinct from write errors so a closed pipe is not reported as corruption.
fn copy_object(
    reader: &mut ObjectReader,
    out: &mut dyn Write,
    dest: Option<&Path>,
) -> anyhow::Result<u64> {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // `explain` turns the reader's I/O error into the store's error naming key and location.
            Err(e) => return Err(reader.explain(e).into()),
        };
        let written = out.write_all(&buffer[..n]);
        match dest {
            None => stdout_result(written)?,
            Some(path) => written.with_context(|| format!("write {}", path.display()))?,
        }
        copied += n as u64;
    }
}

pub fn has(args: KeysArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let present = store.has_many(&args.keys)?;
    let mut out = output::stdout();
    for (key, &here) in args.keys.iter().zip(&present) {
        if global.json {
            json_line(&mut out, &json!({ "key": key.to_hex(), "present": here }))?;
        } else {
            stdout_result(writeln!(out, "{key} {}", if here { "yes" } else { "no" }))?;
        }
    }
    stdout_result(out.flush())?;
    Ok(if present.iter().all(|&p| p) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO)
    })
}

pub fn meta(args: KeysArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let metas = store.meta_many(&args.keys)?;
    let mut out = output::stdout();
    for (key, meta) in args.keys.iter().zip(&metas) {
        if global.json {
            json_line(&mut out, &meta_json(key, meta.as_ref()))?;
        } else {
            stdout_result(writeln!(out, "{}", meta_text(key, meta.as_ref())))?;
        }
    }
    stdout_result(out.flush())?;
    Ok(if metas.iter().all(Option::is_some) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO)
    })
}

fn compression_name(meta: &ObjectMeta) -> &'static str {
    // Pack records carry one compression flag today: zstd.
    if meta.compressed {
        "zstd"
    } else {
        "none"
    }
}

fn meta_text(key: &Key, meta: Option<&ObjectMeta>) -> String {
    let Some(m) = meta else {
        return format!("{key} missing");
    };
    let location = match m.location {
        Location::Loose => "location=loose".to_string(),
        Location::Packed { pack, offset } => format!("location=packed pack={pack} offset={offset}"),
    };
    format!(
        "{key} size={} stored_size={} {location} compression={}",
        m.size,
        m.stored_size,
        compression_name(m)
    )
}

fn meta_json(key: &Key, meta: Option<&ObjectMeta>) -> serde_json::Value {
    let Some(m) = meta else {
        return json!({ "key": key.to_hex(), "present": false });
    };
    let (location, pack, offset) = match m.location {
        Location::Loose => ("loose", None, None),
        Location::Packed { pack, offset } => ("packed", Some(pack), Some(offset)),
    };
    json!({
        "key": key.to_hex(),
        "present": true,
        "size": m.size,
        "stored_size": m.stored_size,
        "location": location,
        "pack": pack,
        "offset": offset,
        "compression": compression_name(m),
    })
}

pub fn ls(global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let keys = store.list()?;
    let mut out = output::stdout();
    for key in keys {
        if global.json {
            json_line(&mut out, &json!({ "key": key.to_hex() }))?;
        } else {
            stdout_result(writeln!(out, "{key}"))?;
        }
    }
    stdout_result(out.flush())?;
    Ok(ExitCode::SUCCESS)
}

pub fn stats(global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let stats = store.stats()?;
    if global.json {
        output::json_document(&stats)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = store.config();
    let objects = stats.loose_objects + stats.packed_objects;
    let text = format!(
        "store           {path}\n\
         settings        hash {hash}, compression {compression}, pack size target {target}\n\
         objects         {objects}\n\
         loose           {lo} objects, {lb}\n\
         packed          {po} objects, {praw} raw, {pstored} stored\n\
         pack files      {pf}, {pfb}\n\
         index           {ib}, {ibo:.1} bytes per object\n",
        path = store.path().display(),
        hash = config.hash,
        compression = config.compression,
        target = human_bytes(config.pack_size_target_bytes),
        lo = stats.loose_objects,
        lb = human_bytes(stats.loose_bytes),
        po = stats.packed_objects,
        praw = human_bytes(stats.packed_raw_bytes),
        pstored = human_bytes(stats.packed_stored_bytes),
        pf = stats.pack_files,
        pfb = human_bytes(stats.pack_file_bytes),
        ib = human_bytes(stats.index_bytes),
        ibo = stats.index_bytes_per_object,
    );
    let mut out = output::stdout();
    stdout_result(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    Ok(ExitCode::SUCCESS)
}
