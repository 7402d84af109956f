//! Configuration files: a base TOML file plus drop-ins (`*.toml` in a directory beside it),
//! merged key by key, deserialized into a program's typed config.
//!
//! Loading has three stages (as Zincati and aziot do it): each file is parsed on its own (a
//! syntax error names its file), the tables are merged key by key in file-name order (a drop-in
//! overrides single keys, not whole sections), and the merged value is deserialized by the
//! program and validated. [`Merged`] remembers which file set each key, so every error names the
//! file that set the offending key, the key, and the reason. `main` maps a [`ConfigError`] to
//! [`EXIT_CONFIG`], which the units list in `RestartPreventExitStatus=`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Exit code for an invalid configuration (sysexits' `EX_CONFIG`): restarting cannot help.
pub const EXIT_CONFIG: u8 = 78;

/// A configuration that could not be loaded: which file, which key, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key is missing, unknown, of the wrong type, or has an invalid value.
    #[error("config file {path}: key `{key}`: {reason}")]
    Key {
        /// The file that set the key (the base file for a key no file set).
        path: PathBuf,
        /// The dotted key, e.g. `model.context`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a configuration's files are: the base file and the drop-in directory beside it.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The base file.
    pub base: PathBuf,
    /// Whether the base file must exist (given with `--config`); the default path may be absent.
    pub explicit: bool,
    /// The drop-in directory.
    pub drop_in_dir: PathBuf,
}

impl Sources {
    /// The base file and the drop-in directory named `drop_in_dir` beside it.
    pub fn new(base: &Path, explicit: bool, drop_in_dir: &str) -> Self {
        let dir = base.parent().unwrap_or_else(|| Path::new(".")).join(drop_in_dir);
        Self { base: base.to_path_buf(), explicit, drop_in_dir: dir }
    }

    /// The files to merge, in order: the base file (if it must or does exist), then the
    /// drop-ins sorted by name.
    pub fn files(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files = Vec::new();
        if self.explicit || self.base.exists() {
            files.push(self.base.clone());
        }
        files.extend(drop_ins(&self.drop_in_dir)?);
        Ok(files)
    }
}

/// The merged TOML value and the origin of every key.
#[derive(Clone, Debug)]
pub struct Merged {
    value: toml::Table,
    /// Dotted key → the file that set it last.
    origin: BTreeMap<String, PathBuf>,
    /// The base file (named for keys no file set).
    base: PathBuf,
}

impl Merged {
    /// An empty configuration whose base file is `base`.
    pub fn empty(base: &Path) -> Self {
        Self { value: toml::Table::new(), origin: BTreeMap::new(), base: base.to_path_buf() }
    }

    /// Reads and merges the files of `sources`.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        Self::load_with(sources, None)
    }

    /// Reads and merges the files of `sources`, with `candidate` (a drop-in path and its text)
    /// in place of that file's current content, or added in name order if it does not exist
    /// yet: what the configuration would be if the candidate were written.
    pub fn load_with(sources: &Sources, candidate: Option<(&Path, &str)>) -> Result<Self, ConfigError> {
        let mut files = sources.files()?;
        if let Some((path, _)) = candidate {
            if !files.iter().any(|f| f == path) {
                files.push(path.to_path_buf());
                let base_first = usize::from(files.first() == Some(&sources.base));
                files[base_first..].sort();
            }
        }
        let mut merged = Self::empty(&sources.base);
        for file in &files {
            match candidate {
                Some((path, text)) if path == file => merged.add(file, text)?,
                _ => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|source| ConfigError::Read { path: file.clone(), source })?;
                    merged.add(file, &text)?;
                }
            }
        }
        Ok(merged)
    }

    /// One text, as if it were the whole configuration in `path`.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut merged = Self::empty(path);
        merged.add(path, text)?;
        Ok(merged)
    }

    /// Parses `text` (the content of `file`) and merges it over what is there.
    pub fn add(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        let table = parse(file, text)?;
        merge_into(&mut self.value, table, "", file, &mut self.origin);
        Ok(())
    }

    /// The merged table.
    pub fn value(&self) -> &toml::Table {
        &self.value
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
            match probe.rfind(['.', '[']) {
                Some(i) => probe.truncate(i),
                None => return self.base.clone(),
            }
        }
    }

    /// An error about `key`, naming the file that set it.
    pub fn key_error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Key { path: self.file_for(key), key: key.to_owned(), reason: reason.into() }
    }

    /// Deserializes the merged value into `T`; an error names the key (for an unknown or
    /// missing field, the field itself rather than its table) and the file that set it.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = toml::Value::Table(self.value.clone());
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let message = err.into_inner().message().trim().to_owned();
            let table = if path == "." { String::new() } else { path };
            let key = match named_field(&message) {
                Some(field) if table.is_empty() => field,
                Some(field) if table.rsplit('.').next() != Some(field.as_str()) => format!("{table}.{field}"),
                _ => table,
            };
            self.key_error(&key, message)
        })
    }
}

/// serde's messages for an unknown or a missing field name it: "unknown field `name`, ...".
fn named_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
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

fn parse(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|err| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: err.to_string().trim().replace('\n', " "),
    })
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

/// Writes `text` to `path` atomically: a temporary file beside it, fsync, rename, fsync of the
/// directory. A crash leaves the old file or the new one, never a mix.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct T {
        a: A,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct A {
        x: u32,
        #[serde(default)]
        y: Vec<String>,
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn drop_ins_override_keys_in_name_order_and_errors_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "p.toml", "[a]\nx = 1\ny = [\"base\"]\n");
        write(dir.path(), "p.d/20.toml", "[a]\nx = 3\n");
        write(dir.path(), "p.d/10.toml", "[a]\nx = 2\ny = []\n");
        write(dir.path(), "p.d/README", "ignored");
        let sources = Sources::new(&base, true, "p.d");
        let t: T = Merged::load(&sources).unwrap().deserialize().unwrap();
        assert_eq!((t.a.x, t.a.y.len()), (3, 0));

        let bad = write(dir.path(), "p.d/30.toml", "[a]\nx = \"three\"\n");
        let err = Merged::load(&sources).unwrap().deserialize::<T>().unwrap_err().to_string();
        assert!(err.contains(&bad.display().to_string()) && err.contains("key `a.x`"), "{err}");
        std::fs::remove_file(bad).unwrap();

        let err = Merged::from_str(&base, "[a]\nx = 1\nz = 2\n").unwrap().deserialize::<T>().unwrap_err();
        assert!(err.to_string().contains("key `a.z`"), "{err}");
        let err = Merged::from_str(&base, "[a]\n").unwrap().deserialize::<T>().unwrap_err();
        assert!(err.to_string().contains("key `a.x`"), "{err}");
        let err = Merged::from_str(&base, "[b]\n").unwrap().deserialize::<T>().unwrap_err();
        assert!(err.to_string().contains("key `b`"), "{err}");
        let err = Merged::from_str(&base, "[a\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn a_candidate_drop_in_is_judged_in_place_without_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "p.toml", "[a]\nx = 1\n");
        write(dir.path(), "p.d/90-local.toml", "[a]\nx = 9\n");
        let sources = Sources::new(&base, true, "p.d");
        let candidate = dir.path().join("p.d/50-fleet.toml");
        // A later drop-in still wins over the candidate, as it would once written.
        let t: T =
            Merged::load_with(&sources, Some((&candidate, "[a]\nx = 5\n"))).unwrap().deserialize().unwrap();
        assert_eq!(t.a.x, 9);
        std::fs::remove_file(dir.path().join("p.d/90-local.toml")).unwrap();
        let t: T =
            Merged::load_with(&sources, Some((&candidate, "[a]\nx = 5\n"))).unwrap().deserialize().unwrap();
        assert_eq!(t.a.x, 5);
        assert!(!candidate.exists());
        let err = Merged::load_with(&sources, Some((&candidate, "[a]\nx = -1\n")))
            .unwrap()
            .deserialize::<T>()
            .unwrap_err();
        assert!(err.to_string().contains("50-fleet.toml"), "{err}");
    }

    #[test]
    fn the_default_base_may_be_absent_but_an_explicit_one_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("absent.toml");
        assert!(Merged::load(&Sources::new(&base, false, "d")).unwrap().value().is_empty());
        assert!(matches!(Merged::load(&Sources::new(&base, true, "d")), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f.toml");
        write_atomically(&p, "one").unwrap();
        write_atomically(&p, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temporary left");
    }
}
