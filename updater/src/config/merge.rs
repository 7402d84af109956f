//! The configuration's files: the base file and the drop-ins in `updater.d/` beside it, each
//! parsed on its own (a syntax error names its file), merged key by key in file-name order,
//! remembering which file set each key so that later errors can name it (as the runtime's
//! `config.rs` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// The drop-in directory's name, beside the base file.
///
/// Not `config.d`: the runtime reads `config.d/` beside its own file (by default
/// `/etc/outpost/config.d`, the updater's default directory too) and refuses tables it does not
/// know, so each program keeps its own drop-in directory.
pub const DROP_IN_DIR: &str = "updater.d";

/// The merged TOML value and the origin of every key.
#[derive(Debug)]
pub(crate) struct Merged {
    /// The merged table.
    pub value: toml::Table,
    /// Dotted key → the file that set it last.
    origin: BTreeMap<String, PathBuf>,
    /// The base file (named for keys no file set).
    base: PathBuf,
}

impl Merged {
    /// Reads `base` and the drop-ins beside it and merges them.
    pub fn load(base: &Path) -> Result<Self, ConfigError> {
        let mut files = vec![base.to_path_buf()];
        files.extend(drop_ins(&base.parent().unwrap_or_else(|| Path::new(".")).join(DROP_IN_DIR))?);
        let mut merged =
            Self { value: toml::Table::new(), origin: BTreeMap::new(), base: base.to_path_buf() };
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(|source| ConfigError::Read { path: file.clone(), source })?;
            merged.add(file, &text)?;
        }
        Ok(merged)
    }

    /// One text, as if it were the whole configuration in `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut merged =
            Self { value: toml::Table::new(), origin: BTreeMap::new(), base: path.to_path_buf() };
        merged.add(path, text)?;
        Ok(merged)
    }

    fn add(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let table = text.parse::<toml::Table>().map_err(|err| ConfigError::Syntax {
            path: file.to_path_buf(),
            message: err.to_string().trim().replace('\n', " "),
        })?;
        merge_into(&mut self.value, table, "", file, &mut self.origin);
        Ok(())
    }

    /// The base file.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The file that set `key` (or the table holding it), else the base file.
    pub fn file_for(&self, key: &str) -> PathBuf {
        let mut probe = key.to_owned();
        loop {
            if let Some(path) = self.origin.get(&probe) {
                return path.clone();
            }
            // `updater.trusted_keys[0]` was set with `updater.trusted_keys`.
            let cut = probe.rfind(['.', '[']);
            match cut {
                Some(i) => probe.truncate(i),
                None => return self.base.clone(),
            }
        }
    }

    /// An error about `key`, naming the file that set it.
    pub fn key_error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Key { path: self.file_for(key), key: key.to_owned(), reason: reason.into() }
    }
}

/// The `*.toml` files in a drop-in directory, sorted by name; none if it does not exist.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_path_buf(), source }),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read { path: dir.to_path_buf(), source })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Merges `from` into `into`: tables merge recursively, any other value replaces.
fn merge_into(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    file: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (key, value) in from {
        let dotted = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge_into(existing, table, &dotted, file, origin);
            }
            (_, value) => {
                origin.insert(dotted, file.to_path_buf());
                into.insert(key, value);
            }
        }
    }
}
