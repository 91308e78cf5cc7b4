//! SQLite catalog (the default): WAL, `synchronous=NORMAL`, one transaction per batch.
//!
//! WAL + NORMAL means a committed batch survives a process kill (the WAL is written before
//! commit returns); only an OS crash may lose the last batches, never corrupt the file.

use std::path::{Path, PathBuf};

use basin_hash::{AlgoSpec, Digest};
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    digest_columns, member_range, path_key, specs_from_columns, status_of, CatalogError,
    CatalogStore, Dialect, FileRow, KnownFile, KnownFiles, RunCounters, StoredRow,
};
use crate::walk::FileMeta;
use crate::{clock, lock};

pub struct SqliteCatalog {
    path: PathBuf,
    conn: Connection,
}

impl SqliteCatalog {
    pub fn open(path: &Path) -> Result<SqliteCatalog, CatalogError> {
        let wrap = |source| CatalogError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(wrap)?;
        // Another process may hold a write transaction briefly (e.g. verify reading while a scan commits).
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(wrap)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536;",
        )
        .map_err(wrap)?;
        conn.execute_batch(&Dialect::Sqlite.schema())
            .map_err(wrap)?;
        Ok(SqliteCatalog {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn wrap(&self) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        |source| CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn digest_column_names(&self) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('files')")
            .map_err(self.wrap())?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.wrap())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.wrap())?;
        Ok(names.into_iter().filter(|n| n.starts_with("d_")).collect())
    }
}

impl CatalogStore for SqliteCatalog {
    fn lock_dir(&self) -> PathBuf {
        let mut dir = self.path.clone().into_os_string();
        dir.push(".locks");
        PathBuf::from(dir)
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn root_id(&mut self, root: &str) -> Result<i64, CatalogError> {
        self.conn
            .execute(
                "INSERT INTO roots (path) VALUES (?1) ON CONFLICT (path) DO NOTHING",
                [root],
            )
            .map_err(self.wrap())?;
        self.conn
            .query_row("SELECT id FROM roots WHERE path = ?1", [root], |r| r.get(0))
            .map_err(self.wrap())
    }

    fn roots(&mut self) -> Result<Vec<(i64, String)>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, path FROM roots ORDER BY path")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.wrap())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.wrap())
    }

    fn ensure_algorithms(&mut self, specs: &[AlgoSpec]) -> Result<(), CatalogError> {
        let existing = self.digest_column_names()?;
        for spec in specs {
            let column = format!("d_{}", spec.column_name());
            if !existing.contains(&column) {
                self.conn
                    .execute_batch(&format!("ALTER TABLE files ADD COLUMN {column} BLOB"))
                    .map_err(self.wrap())?;
            }
        }
        Ok(())
    }

    fn stored_algorithms(&mut self) -> Result<Vec<AlgoSpec>, CatalogError> {
        specs_from_columns(&self.location(), &self.digest_column_names()?)
    }

    fn start_run(&mut self, root_id: i64, command: &str) -> Result<i64, CatalogError> {
        let tx = self
            .conn
            .transaction()
            .map_err(|source| CatalogError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        let wrap = |source| CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        };
        tx.execute(
            "UPDATE runs SET state = 'interrupted' WHERE root_id = ?1 AND state = 'running'",
            [root_id],
        )
        .map_err(wrap)?;
        tx.execute(
            "INSERT INTO runs (root_id, command, host, pid, started_ns, state) VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
            params![root_id, command, lock::host_name(), std::process::id(), clock::now_ns()],
        )
        .map_err(wrap)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(wrap)?;
        Ok(id)
    }

    fn finish_run(&mut self, run_id: i64, c: &RunCounters) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE runs SET state = 'done', finished_ns = ?2, files_hashed = ?3, files_skipped = ?4, files_failed = ?5, bytes_hashed = ?6 WHERE id = ?1",
                params![run_id, clock::now_ns(), c.files_hashed as i64, c.files_skipped as i64, c.files_failed as i64, c.bytes_hashed as i64],
            )
            .map_err(self.wrap())?;
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
        let mut stmt = self
            .conn
            .prepare(&Dialect::Sqlite.known_sql(&present))
            .map_err(self.wrap())?;
        let mut rows = stmt.query([root_id]).map_err(self.wrap())?;
        let mut known = KnownFiles::new();
        while let Some(r) = rows.next().map_err(|source| CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        })? {
            let wrap = |source| CatalogError::Sqlite {
                path: self.path.clone(),
                source,
            };
            let rel_path: String = r.get(0).map_err(wrap)?;
            let meta = FileMeta {
                size_bytes: r.get::<_, i64>(1).map_err(wrap)? as u64,
                mtime_ns: r.get(2).map_err(wrap)?,
                inode: r.get::<_, i64>(3).map_err(wrap)? as u64,
            };
            let complete = all_present && r.get::<_, i64>(4).map_err(wrap)? == 1;
            known.insert(path_key(&rel_path), KnownFile { meta, complete });
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
        let sql = Dialect::Sqlite.upsert_sql(specs, &other, 1);
        let path = self.path.clone();
        let wrap = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        {
            let mut upsert = tx.prepare_cached(&sql).map_err(wrap)?;
            let mut delete = tx
                .prepare_cached(&Dialect::Sqlite.delete_members_sql())
                .map_err(wrap)?;
            let now = clock::now_ns();
            for row in rows {
                if row.replace_members {
                    let (from, to) = member_range(&row.rel_path);
                    delete.execute(params![root_id, from, to]).map_err(wrap)?;
                }
                let (status, error) = status_of(row);
                let mut values: Vec<rusqlite::types::Value> = vec![
                    root_id.into(),
                    row.rel_path.clone().into(),
                    (row.meta.size_bytes as i64).into(),
                    row.meta.mtime_ns.into(),
                    (row.meta.inode as i64).into(),
                    status.to_string().into(),
                    error.map(str::to_string).into(),
                    run_id.into(),
                    now.into(),
                ];
                values.extend(
                    digest_columns(row, specs)
                        .into_iter()
                        .map(|d| d.map(<[u8]>::to_vec).into()),
                );
                upsert
                    .execute(rusqlite::params_from_iter(values))
                    .map_err(wrap)?;
            }
        }
        tx.commit().map_err(wrap)
    }

    fn failed_paths(&mut self, root_id: i64) -> Result<Vec<String>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT rel_path FROM files WHERE root_id = ?1 AND status = 'error' ORDER BY rel_path")
            .map_err(self.wrap())?;
        let rows = stmt
            .query_map([root_id], |r| r.get(0))
            .map_err(self.wrap())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.wrap())
    }

    fn stored_rows(&mut self, root_id: i64) -> Result<Vec<StoredRow>, CatalogError> {
        let columns = self.digest_column_names()?;
        let specs = specs_from_columns(&self.location(), &columns)?;
        let mut sql = String::from("SELECT rel_path, size, mtime_ns, inode, status, error");
        for c in &columns {
            sql.push_str(", ");
            sql.push_str(c);
        }
        sql.push_str(" FROM files WHERE root_id = ?1 ORDER BY rel_path");
        let mut stmt = self.conn.prepare(&sql).map_err(self.wrap())?;
        let rows = stmt
            .query_map([root_id], |r| {
                let status: String = r.get(4)?;
                let mut digests = Vec::new();
                for (i, spec) in specs.iter().enumerate() {
                    if let Some(bytes) = r.get::<_, Option<Vec<u8>>>(6 + i)? {
                        digests.push(Digest { spec: *spec, bytes });
                    }
                }
                Ok(StoredRow {
                    rel_path: r.get(0)?,
                    size_bytes: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    inode: r.get::<_, i64>(3)? as u64,
                    error: if status == "ok" {
                        None
                    } else {
                        Some(r.get::<_, Option<String>>(5)?.unwrap_or(status))
                    },
                    digests,
                })
            })
            .map_err(self.wrap())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.wrap())
    }
}

impl SqliteCatalog {
    /// The run row's state, for tests and `verify` output.
    pub fn run_state(&self, run_id: i64) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row("SELECT state FROM runs WHERE id = ?1", [run_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.wrap())
    }
}
