//! Where a release comes from: a manifest file with its artifacts beside it, or a manifest URL
//! with its artifacts beside it on the server. Either way an artifact with an absolute `url`
//! is downloaded from there.
//!
//! Downloads land in the store's `downloads/` (same file system as `staging/`, so the verified
//! file is renamed into the update, never copied), as `<sha256>.part` until complete; a partial
//! file survives failures, SIGTERM and crashes and is resumed by the next attempt (see
//! [`crate::fetch::download`]).

use std::path::{Path, PathBuf};

use crate::fetch::{self, Client, Download, Progress};
use crate::manifest::{Artifact, Manifest, ManifestError};
use crate::store::Store;

/// A manifest's location, as given to `apply` or configured as `manifest_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A local `manifest.json`.
    File(PathBuf),
    /// An `http(s)://` URL.
    Url(String),
}

/// Where an artifact's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local file (beside a local manifest).
    File(PathBuf),
    /// A URL to download.
    Url(String),
}

/// A verified artifact file ready for staging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obtained {
    /// Outside the store: copied into staging while it is hashed.
    Outside(PathBuf),
    /// Downloaded into the store and verified while it streamed in: moved into staging.
    Downloaded(PathBuf),
}

impl Source {
    /// A URL if `arg` starts with `http://` or `https://`, else a file path.
    pub fn parse(arg: &str) -> Self {
        if fetch::is_url(arg) {
            Self::Url(arg.to_owned())
        } else {
            Self::File(PathBuf::from(arg))
        }
    }

    /// Reads (or fetches, with retries, at most 1 MiB) and parses the manifest; returns it and its
    /// exact bytes.
    pub fn manifest(&self, client: &Client) -> Result<(Manifest, Vec<u8>), SourceError> {
        match self {
            Self::File(path) => Ok(Manifest::read(path)?),
            Self::Url(url) => {
                let bytes = client.fetch_manifest(url)?;
                Ok((Manifest::parse(Path::new(url), &bytes)?, bytes))
            }
        }
    }

    /// Where `artifact` is: its own absolute `url`, else its name beside the manifest.
    pub fn locate(&self, artifact: &Artifact) -> Location {
        if let Some(url) = &artifact.url {
            return Location::Url(url.clone());
        }
        match self {
            Self::File(path) => Location::File(path.parent().unwrap_or(Path::new(".")).join(&artifact.name)),
            Self::Url(url) => Location::Url(fetch::sibling_url(url, &artifact.name)),
        }
    }

    /// Makes `artifact` available locally: a file beside a local manifest as it is, a URL
    /// downloaded (resumably) into the store's `downloads/`.
    pub fn obtain(
        &self,
        artifact: &Artifact,
        client: &Client,
        store: &Store,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Obtained, SourceError> {
        match self.locate(artifact) {
            Location::File(path) => Ok(Obtained::Outside(path)),
            Location::Url(url) => {
                tracing::info!(%url, bytes = artifact.size, "downloading {}", artifact.name);
                let d = Download { url: &url, size: artifact.size, sha256: &artifact.sha256 };
                let done = fetch::download(client, d, &store.downloads_dir(), progress)?;
                tracing::info!(
                    %url,
                    resumed_from = done.resumed_from,
                    attempts = done.attempts,
                    "downloaded and verified {}",
                    artifact.name
                );
                Ok(Obtained::Downloaded(done.path))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}

impl From<&Path> for Source {
    fn from(path: &Path) -> Self {
        Self::File(path.to_path_buf())
    }
}

/// A manifest or artifact that could not be read or fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The manifest could not be read or parsed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Fetching over HTTP failed.
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ArtifactKind;

    #[test]
    fn artifacts_are_found_beside_the_manifest_unless_absolute() {
        let mut a = Artifact {
            kind: ArtifactKind::Full,
            name: "m.zst".into(),
            url: None,
            size: 1,
            sha256: String::new(),
            base_sha256: None,
            base_size: None,
        };
        let file = Source::parse("/srv/rel/manifest.json");
        assert_eq!(file.locate(&a), Location::File("/srv/rel/m.zst".into()));
        let url = Source::parse("https://h/ch/manifest.json?x=1");
        assert_eq!(url, Source::Url("https://h/ch/manifest.json?x=1".into()));
        assert_eq!(url.locate(&a), Location::Url("https://h/ch/m.zst".into()));
        a.url = Some("https://cdn/blobs/abc".into());
        assert_eq!(file.locate(&a), Location::Url("https://cdn/blobs/abc".into()));
        assert_eq!(url.locate(&a), Location::Url("https://cdn/blobs/abc".into()));
    }
}
