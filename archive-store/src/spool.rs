//! The archiver's optional on-disk spool: the queued entries of ongoing calls, one JSON
//! object per line, so a restart while the store is down loses nothing.
//!
//! Every queued entry is appended and `fsync`ed before the archiver reports it queued.
//! After each batch reaches the store the file is rewritten with what is left (a temporary
//! file, `fsync`, rename), or emptied. A crash between a batch's commit and that rewrite
//! writes the batch again after the restart: at least once, never lost. A torn last line
//! (a crash during an append, which was therefore never reported queued) is skipped.

use std::path::{Path, PathBuf};

use confer_signalling::archive::{Entry, RecordKind, UnixMillis};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

pub(crate) struct Spool {
    path: PathBuf,
}

impl Spool {
    /// Opens (creating if missing) the spool at `path` and returns the entries it holds,
    /// oldest first, and how many lines could not be read.
    pub(crate) async fn load(path: &Path) -> std::io::Result<(Spool, Vec<Entry>, usize)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let text = match tokio::fs::read(path).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match entry_from_line(line) {
                Some(entry) => entries.push(entry),
                None => bad += 1,
            }
        }
        Ok((
            Spool {
                path: path.to_owned(),
            },
            entries,
            bad,
        ))
    }

    /// Appends one entry's line (from [`entry_line`]) durably.
    pub(crate) async fn append(&self, line: &str) -> std::io::Result<()> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        file.write_all(line.as_bytes()).await?;
        file.sync_data().await
    }

    /// Replaces the spool's content with `lines` (each ending in a newline), durably.
    pub(crate) async fn rewrite<'a>(
        &self,
        lines: impl Iterator<Item = &'a str>,
    ) -> std::io::Result<()> {
        let text: String = lines.collect();
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(text.as_bytes()).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &self.path).await
    }
}

/// One entry as a spool line, ending in a newline.
pub(crate) fn entry_line(entry: &Entry) -> String {
    let mut obj = Map::new();
    obj.insert("at".into(), Value::from(entry.at.0));
    obj.insert("kind".into(), Value::from(entry.kind.label()));
    if let Some(c) = &entry.conversation {
        obj.insert("conversation".into(), Value::from(c.as_str()));
    }
    if let Some(u) = &entry.user {
        obj.insert("user".into(), Value::from(u.as_str()));
    }
    obj.insert("details".into(), Value::Object(entry.details.clone()));
    let mut line = Value::Object(obj).to_string();
    line.push('\n');
    line
}

fn entry_from_line(line: &str) -> Option<Entry> {
    let Value::Object(mut obj) = serde_json::from_str(line).ok()? else {
        return None;
    };
    let text = |v: Option<Value>| match v {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    };
    let Some(Value::Object(details)) = obj.remove("details") else {
        return None;
    };
    Some(Entry {
        at: UnixMillis(obj.get("at")?.as_i64()?),
        kind: RecordKind::from_label(obj.get("kind")?.as_str()?),
        conversation: text(obj.remove("conversation"))?,
        user: text(obj.remove("user"))?,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use confer_signalling::archive::PinOutcome;

    #[test]
    fn an_entry_round_trips_through_its_spool_line() {
        let e = Entry::pin_entry(UnixMillis(5), "c1", PinOutcome::LockedOut { attempts: 3 })
            .user("bob");
        let line = entry_line(&e);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert_eq!(entry_from_line(line.trim_end()), Some(e));
        assert_eq!(entry_from_line("{\"at\":1,\"kind\":\"left\""), None);
        assert_eq!(
            entry_from_line("{\"at\":1.5,\"kind\":\"left\",\"details\":{}}"),
            None
        );
    }
}
