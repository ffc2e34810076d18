//! Files: their rows, paging, retention and the garbage their deletion leaves.

use super::*;

impl Store {
    pub async fn insert_file(&self, f: &FileRow) -> Result<()> {
        insert_file(&self.pool, f, None).await
    }

    /// Inserts a media payload of batch `batch` (deleted with it), unless a row with its id is
    /// there already: the id is derived from the batch and the payload, so that is a resumed
    /// worker storing it again.
    pub async fn insert_media_file(&self, f: &FileRow, batch: &str) -> Result<()> {
        insert_file(&self.pool, f, Some(batch)).await
    }

    /// A file its owner can see.
    pub async fn file(&self, owner: &str, id: &str) -> Result<Option<FileRow>> {
        let row = sqlx::query_as::<_, FileRow>(sql(format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND owner = $2 AND deleted = 0"
        )))
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    /// Up to `limit` files after the cursor, in id (creation) order.
    pub async fn files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: i64,
        descending: bool,
    ) -> Result<Vec<FileRow>> {
        let (cmp, dir) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let mut text = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE owner = $1 AND deleted = 0 \
             AND ($2 = '' OR purpose = $2)"
        );
        if after.is_some() {
            text.push_str(&format!(" AND id {cmp} $4"));
        }
        text.push_str(&format!(" ORDER BY id {dir} LIMIT $3"));
        let mut q = sqlx::query_as::<_, FileRow>(sql(text))
            .bind(owner)
            .bind(purpose.unwrap_or(""))
            .bind(limit);
        if let Some(after) = after {
            q = q.bind(after);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows)
    }

    /// Hides a file from its owner; its content goes with the next [`Store::garbage`] pass.
    pub async fn delete_file(&self, owner: &str, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE files SET deleted = 1 WHERE id = $1 AND owner = $2 AND deleted = 0",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Hides files whose `expires_at` has passed. Returns how many.
    pub async fn expire_files(&self, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE files SET deleted = 1 WHERE deleted = 0 AND expires_at IS NOT NULL \
             AND expires_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deleted files whose content no unfinished batch reads any more.
    pub async fn garbage(&self) -> Result<Vec<FileRow>> {
        let rows = sqlx::query_as::<_, FileRow>(sql(format!(
            "SELECT {FILE_COLUMNS} FROM files f WHERE deleted = 1 AND NOT EXISTS (\
             SELECT 1 FROM batches b WHERE b.input_blob = f.blob \
             AND b.status NOT IN {}) LIMIT 1000",
            BatchStatus::sql_list(&BatchStatus::TERMINAL)
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Forgets a deleted file once its content is gone.
    pub async fn purge_file(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM files WHERE id = $1 AND deleted = 1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ----- batches -----
}

/// `media_of`: the batch whose media payload the file is (see [`Store::insert_media_file`]).
pub(super) async fn insert_file<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    f: &FileRow,
    media_of: Option<&str>,
) -> Result<()> {
    let insert = "INSERT INTO files (id, owner, filename, purpose, bytes, created_at, \
                  expires_at, blob, batch_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    let statement = match media_of {
        None => insert.to_owned(),
        Some(_) => format!("{insert} ON CONFLICT (id) DO NOTHING"),
    };
    sqlx::query(sql(statement))
        .bind(&f.id)
        .bind(&f.owner)
        .bind(&f.filename)
        .bind(&f.purpose)
        .bind(f.bytes)
        .bind(f.created_at)
        .bind(f.expires_at)
        .bind(&f.blob)
        .bind(media_of)
        .execute(executor)
        .await?;
    Ok(())
}
