//! PostgreSQL catalog, selected by a `postgres://` URL. Uses the blocking `postgres` client: a
//! scan is CPU- and disk-bound, and one connection writing multi-row upserts keeps up with it.
//!
//! An optional `schema=<name>` query parameter (ours, removed before connecting) puts the tables
//! in that schema, created if missing; several catalogs can then share one database.

use std::path::PathBuf;

use basin_hash::{AlgoSpec, Digest};
use postgres::types::ToSql;
use postgres::{Client, NoTls};

use super::{
    digest_columns, member_range, path_key, specs_from_columns, status_of, CatalogError,
    CatalogStore, Dialect, FileRow, KnownFile, KnownFiles, RunCounters, StoredRow,
};
use crate::walk::FileMeta;
use crate::{clock, lock};

/// Rows per multi-row INSERT: ~14 parameters a row stays far below PostgreSQL's 65,535.
const UPSERT_ROWS_PER_STATEMENT: usize = 200;

pub struct PostgresCatalog {
    /// The URL without password, for messages and lock naming.
    url: String,
    client: Client,
}

fn redact(url: &str) -> String {
    // postgres://user:secret@host → postgres://user@host
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Splits our `schema=` parameter off the URL.
fn split_schema(url: &str) -> Result<(String, Option<String>), CatalogError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("schema=") {
            Some(name) => schema = Some(name.to_string()),
            None => rest.push(pair),
        }
    }
    if let Some(name) = &schema {
        if name.is_empty()
            || name.len() > 63
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(CatalogError::BadLocation {
                location: redact(url),
                reason: format!("schema {name:?} must be 1-63 letters, digits or underscores"),
            });
        }
    }
    let base = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((base, schema))
}

impl PostgresCatalog {
    pub fn connect(url: &str) -> Result<PostgresCatalog, CatalogError> {
        let (conn_url, schema) = split_schema(url)?;
        let shown = redact(url);
        let wrap = |source| CatalogError::Postgres {
            url: shown.clone(),
            source,
        };
        let mut client = Client::connect(&conn_url, NoTls).map_err(wrap)?;
        if let Some(schema) = &schema {
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                ))
                .map_err(wrap)?;
        }
        // Two scans creating the same tables at once would race in CREATE TABLE IF NOT EXISTS.
        client
            .batch_execute("SELECT pg_advisory_lock(7427730155)")
            .map_err(wrap)?;
        let created = client.batch_execute(&Dialect::Postgres.schema());
        client
            .batch_execute("SELECT pg_advisory_unlock(7427730155)")
            .map_err(wrap)?;
        created.map_err(wrap)?;
        Ok(PostgresCatalog { url: shown, client })
    }

    fn wrap(&self) -> impl Fn(postgres::Error) -> CatalogError + '_ {
        |source| CatalogError::Postgres {
            url: self.url.clone(),
            source,
        }
    }

    fn digest_column_names(&mut self) -> Result<Vec<String>, CatalogError> {
        let url = self.url.clone();
        let rows = self
            .client
            .query(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = 'files' AND column_name LIKE 'd\\_%'
                 ORDER BY ordinal_position",
                &[],
            )
            .map_err(|source| CatalogError::Postgres { url, source })?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }
}

impl CatalogStore for PostgresCatalog {
    fn lock_dir(&self) -> PathBuf {
        std::env::temp_dir().join("basin-locks").join(format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(self.url.as_bytes())
        ))
    }

    fn location(&self) -> String {
        self.url.clone()
    }

    fn root_id(&mut self, root: &str) -> Result<i64, CatalogError> {
        let url = self.url.clone();
        let wrap = |source| CatalogError::Postgres {
            url: url.clone(),
            source,
        };
        self.client
            .execute(
                "INSERT INTO roots (path) VALUES ($1) ON CONFLICT (path) DO NOTHING",
                &[&root],
            )
            .map_err(wrap)?;
        let row = self
            .client
            .query_one("SELECT id FROM roots WHERE path = $1", &[&root])
            .map_err(wrap)?;
        Ok(row.get(0))
    }

    fn roots(&mut self) -> Result<Vec<(i64, String)>, CatalogError> {
        let url = self.url.clone();
        let rows = self
            .client
            .query("SELECT id, path FROM roots ORDER BY path", &[])
            .map_err(|source| CatalogError::Postgres { url, source })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn ensure_algorithms(&mut self, specs: &[AlgoSpec]) -> Result<(), CatalogError> {
        let existing = self.digest_column_names()?;
        let missing: Vec<String> = specs
            .iter()
            .map(|s| format!("d_{}", s.column_name()))
            .filter(|c| !existing.contains(c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let sql: String = missing
            .iter()
            .map(|c| format!("ALTER TABLE files ADD COLUMN IF NOT EXISTS {c} BYTEA;"))
            .collect();
        self.client.batch_execute(&sql).map_err(self.wrap())
    }

    fn stored_algorithms(&mut self) -> Result<Vec<AlgoSpec>, CatalogError> {
        let columns = self.digest_column_names()?;
        specs_from_columns(&self.url, &columns)
    }

    fn start_run(&mut self, root_id: i64, command: &str) -> Result<i64, CatalogError> {
        let url = self.url.clone();
        let wrap = |source| CatalogError::Postgres {
            url: url.clone(),
            source,
        };
        let mut tx = self.client.transaction().map_err(wrap)?;
        tx.execute(
            "UPDATE runs SET state = 'interrupted' WHERE root_id = $1 AND state = 'running'",
            &[&root_id],
        )
        .map_err(wrap)?;
        let row = tx
            .query_one(
                "INSERT INTO runs (root_id, command, host, pid, started_ns, state) VALUES ($1, $2, $3, $4, $5, 'running') RETURNING id",
                &[&root_id, &command, &lock::host_name(), &i64::from(std::process::id()), &clock::now_ns()],
            )
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
        Ok(row.get(0))
    }

    fn finish_run(&mut self, run_id: i64, c: &RunCounters) -> Result<(), CatalogError> {
        let (hashed, skipped, failed, bytes) = (
            c.files_hashed as i64,
            c.files_skipped as i64,
            c.files_failed as i64,
            c.bytes_hashed as i64,
        );
        let url = self.url.clone();
        self.client
            .execute(
                "UPDATE runs SET state = 'done', finished_ns = $2, files_hashed = $3, files_skipped = $4, files_failed = $5, bytes_hashed = $6 WHERE id = $1",
                &[&run_id, &clock::now_ns(), &hashed, &skipped, &failed, &bytes],
            )
            .map_err(|source| CatalogError::Postgres { url, source })?;
        Ok(())
    }

    fn known_files(
        &mut self,
        root_id: i64,
        specs: &[AlgoSpec],
    ) -> Result<KnownFiles, CatalogError> {
        let stored = self.digest_column_names()?;
        let present: Vec<AlgoSpec> = specs
            .iter()
            .copied()
            .filter(|s| stored.contains(&format!("d_{}", s.column_name())))
            .collect();
        let all_present = present.len() == specs.len();
        let url = self.url.clone();
        let rows = self
            .client
            .query(&Dialect::Postgres.known_sql(&present), &[&root_id])
            .map_err(|source| CatalogError::Postgres { url, source })?;
        let mut known = KnownFiles::with_capacity(rows.len());
        for r in rows {
            let rel_path: &str = r.get(0);
            let meta = FileMeta {
                size_bytes: r.get::<_, i64>(1) as u64,
                mtime_ns: r.get(2),
                inode: r.get::<_, i64>(3) as u64,
            };
            let complete = all_present && r.get::<_, i32>(4) == 1;
            known.insert(path_key(rel_path), KnownFile { meta, complete });
        }
        Ok(known)
    }

    fn write_batch(
        &mut self,
        root_id: i64,
        run_id: i64,
        specs: &[AlgoSpec],
        rows: &[FileRow],
    ) -> Result<(), CatalogError> {
        let other = super::other_digest_columns(self.digest_column_names()?, specs);
        let url = self.url.clone();
        let wrap = |source| CatalogError::Postgres {
            url: url.clone(),
            source,
        };
        let now = clock::now_ns();
        let mut tx = self.client.transaction().map_err(wrap)?;
        let delete_sql = Dialect::Postgres.delete_members_sql();
        for row in rows.iter().filter(|r| r.replace_members) {
            let (from, to) = member_range(&row.rel_path);
            tx.execute(&delete_sql, &[&root_id, &from, &to])
                .map_err(wrap)?;
        }
        // A path may appear twice in one batch (retry lists); one statement must not upsert a key twice.
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut seen = std::collections::HashSet::new();
            while end < rows.len()
                && end - start < UPSERT_ROWS_PER_STATEMENT
                && seen.insert(rows[end].rel_path.as_str())
            {
                end += 1;
            }
            let chunk = &rows[start..end];
            let sql = Dialect::Postgres.upsert_sql(specs, &other, chunk.len());
            let mut owned: Vec<(i64, i64, i64, &'static str, Option<&str>)> =
                Vec::with_capacity(chunk.len());
            let mut digests: Vec<Vec<Option<&[u8]>>> = Vec::with_capacity(chunk.len());
            for row in chunk {
                let (status, error) = status_of(row);
                owned.push((
                    row.meta.size_bytes as i64,
                    row.meta.mtime_ns,
                    row.meta.inode as i64,
                    status,
                    error,
                ));
                digests.push(digest_columns(row, specs));
            }
            let mut params: Vec<&(dyn ToSql + Sync)> =
                Vec::with_capacity(chunk.len() * (9 + specs.len()));
            for ((row, fields), row_digests) in chunk.iter().zip(&owned).zip(&digests) {
                params.push(&root_id);
                params.push(&row.rel_path);
                params.push(&fields.0);
                params.push(&fields.1);
                params.push(&fields.2);
                params.push(&fields.3);
                params.push(&fields.4);
                params.push(&run_id);
                params.push(&now);
                for d in row_digests {
                    params.push(d);
                }
            }
            tx.execute(&sql, &params).map_err(wrap)?;
            start = end;
        }
        tx.commit().map_err(wrap)
    }

    fn failed_paths(&mut self, root_id: i64) -> Result<Vec<String>, CatalogError> {
        let url = self.url.clone();
        let rows = self
            .client
            .query("SELECT rel_path FROM files WHERE root_id = $1 AND status = 'error' ORDER BY rel_path", &[&root_id])
            .map_err(|source| CatalogError::Postgres { url, source })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn stored_rows(&mut self, root_id: i64) -> Result<Vec<StoredRow>, CatalogError> {
        let columns = self.digest_column_names()?;
        let specs = specs_from_columns(&self.url, &columns)?;
        let mut sql = String::from("SELECT rel_path, size, mtime_ns, inode, status, error");
        for c in &columns {
            sql.push_str(", ");
            sql.push_str(c);
        }
        sql.push_str(" FROM files WHERE root_id = $1 ORDER BY rel_path");
        let url = self.url.clone();
        let rows = self
            .client
            .query(&sql, &[&root_id])
            .map_err(|source| CatalogError::Postgres { url, source })?;
        Ok(rows
            .iter()
            .map(|r| {
                let status: String = r.get(4);
                let digests = specs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, spec)| {
                        r.get::<_, Option<Vec<u8>>>(6 + i)
                            .map(|bytes| Digest { spec: *spec, bytes })
                    })
                    .collect();
                StoredRow {
                    rel_path: r.get(0),
                    size_bytes: r.get::<_, i64>(1) as u64,
                    mtime_ns: r.get(2),
                    inode: r.get::<_, i64>(3) as u64,
                    error: if status == "ok" {
                        None
                    } else {
                        Some(r.get::<_, Option<String>>(5).unwrap_or(status))
                    },
                    digests,
                }
            })
            .collect())
    }
}
