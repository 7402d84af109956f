use super::*;

fn with_key() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    keys::keygen(dir.path()).unwrap();
    let p = dir.path().join("release.pub");
    (dir, p)
}

fn load(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml_str(Path::new("/etc/outpost/updater.toml"), text)
}

fn key_of(err: ConfigError) -> String {
    match err {
        ConfigError::Key { key, path, .. } => {
            assert_eq!(path, Path::new("/etc/outpost/updater.toml"));
            key
        }
        other => panic!("not a key error: {other}"),
    }
}

#[test]
fn valid_config_loads_with_defaults() {
    let (_d, key) = with_key();
    let s = load(&format!(
        "[updater]\ntrusted_keys = [{key:?}]\ndevice_class = \"pi5-8g\"\n",
        key = key.display().to_string()
    ))
    .unwrap();
    assert_eq!(s.updater.store, Path::new("/var/lib/outpost/models"));
    assert_eq!(s.updater.threshold, 1);
    assert_eq!(s.keys.len(), 1);
    assert_eq!(s.updater.trial_timeout, Duration::from_secs(120));
    assert_eq!(s.updater.max_trials, 3);
    assert_eq!(s.updater.runtime_absent, RuntimeAbsent::Fail);
    assert_eq!(s.updater.manifest_url, None);
    assert_eq!(s.updater.check_interval, Duration::from_secs(3600));
    assert_eq!(s.http.connect_timeout, Duration::from_secs(30));
    assert_eq!(s.http.read_timeout, Duration::from_secs(60));
    assert_eq!(s.http.min_rate, 1024);
    assert_eq!(s.http.retries, 5);
    assert_eq!(s.http.retry_backoff, Duration::from_secs(2));
    assert!(s.http.ca_certs.is_empty());
    assert!(matches!(s.manifest_url(), Err(ConfigError::Key { key, .. }) if key == "updater.manifest_url"));
    let s = load(&format!(
        "[updater]\ntrusted_keys = [{key:?}]\ndevice_class = \"a\"\ntrial_timeout = \"90s\"\nmax_trials = 2\nruntime_absent = \"commit\"\n",
        key = key.display().to_string()
    ))
    .unwrap();
    assert_eq!(s.updater.trial_timeout, Duration::from_secs(90));
    assert_eq!(s.updater.max_trials, 2);
    assert_eq!(s.updater.runtime_absent, RuntimeAbsent::Commit);
}

#[test]
fn errors_name_the_key() {
    let (_d, key) = with_key();
    let k = key.display().to_string();
    let cases = [
        // A missing key is named itself.
        (format!("[updater]\ntrusted_keys = [{k:?}]\n"), "updater.device_class"),
        // `[mqtt]` is checked as the runtime checks it.
        (
            format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\n[mqtt]\nurl = \"tcp://b\"\n"),
            "mqtt.url",
        ),
        (format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\n[mqtt]\nurl = \"mqtt://b\"\ndevice_id = \"a/b\"\n"), "mqtt.device_id"),
        (
            format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nthreshold = \"x\"\n"),
            "updater.threshold",
        ),
        (format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nbogus = 1\n"), "updater.bogus"),
        (
            format!("[updater]\ntrusted_keys = [{k:?}, {k:?}]\ndevice_class = \"a\"\nthreshold = 2\n"),
            "updater.threshold",
        ),
        (format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a/b\"\n"), "updater.device_class"),
        (
            format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\ntrial_timeout = \"soon\"\n"),
            "updater.trial_timeout",
        ),
        (
            format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nmax_trials = 0\n"),
            "updater.max_trials",
        ),
        (
            format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nruntime_absent = \"maybe\"\n"),
            "updater.runtime_absent",
        ),
        (
            format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\nstore = \"rel\"\n"),
            "updater.store",
        ),
        (
            "[updater]\ntrusted_keys = [\"/nonexistent.pub\"]\ndevice_class = \"a\"\n".to_owned(),
            "updater.trusted_keys[0]",
        ),
    ];
    let base = format!("[updater]\ntrusted_keys = [{k:?}]\ndevice_class = \"a\"\n");
    let not_pem = format!("ca_file = {k:?}");
    let more = [
        ("manifest_url = \"ftp://example.com/m.json\"", "updater.manifest_url"),
        ("manifest_url = \"https://\"", "updater.manifest_url"),
        ("manifest_url = \"https://exa mple.com/m.json\"", "updater.manifest_url"),
        ("check_interval = \"0s\"", "updater.check_interval"),
        ("check_interval = \"often\"", "updater.check_interval"),
        ("connect_timeout = \"1ms\"", "updater.connect_timeout"),
        ("read_timeout = \"2h\"", "updater.read_timeout"),
        ("min_rate = -1", "updater.min_rate"),
        ("retries = 1000", "updater.retries"),
        ("retry_backoff = \"0s\"", "updater.retry_backoff"),
        ("ca_file = \"/nonexistent/ca.pem\"", "updater.ca_file"),
        (not_pem.as_str(), "updater.ca_file"),
    ];
    let cases = cases.into_iter().chain(more.iter().map(|(line, key)| (format!("{base}{line}\n"), *key)));
    for (text, want) in cases {
        let err = load(&text).unwrap_err();
        let msg = err.to_string();
        assert_eq!(key_of(err), want, "{msg}");
    }
}

#[test]
fn transfer_keys_load() {
    let (d, key) = with_key();
    let ca = d.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let s = load(&format!(
        "[updater]\ntrusted_keys = [{key:?}]\ndevice_class = \"a\"\nmanifest_url = \"https://updates.example.com/pi5/manifest.json\"\n\
         check_interval = \"10m\"\nconnect_timeout = \"5s\"\nread_timeout = \"20s\"\nmin_rate = 0\nretries = 2\n\
         retry_backoff = \"100ms\"\nca_file = {ca:?}\n",
        key = key.display().to_string(),
        ca = ca.display().to_string(),
    ))
    .unwrap();
    assert_eq!(s.manifest_url().unwrap(), "https://updates.example.com/pi5/manifest.json");
    assert_eq!(s.updater.check_interval, Duration::from_secs(600));
    assert_eq!(s.http.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.http.read_timeout, Duration::from_secs(20));
    assert_eq!((s.http.min_rate, s.http.retries), (0, 2));
    assert_eq!(s.http.retry_backoff, Duration::from_millis(100));
    assert_eq!(s.http.ca_certs.len(), 1);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn drop_ins_override_single_keys_in_name_order() {
    let (d, key) = with_key();
    let base = write(
        d.path(),
        "updater.toml",
        &format!(
            "[updater]\ntrusted_keys = [{:?}]\ndevice_class = \"a\"\nretries = 1\nmax_trials = 2\n",
            key.display().to_string()
        ),
    );
    write(d.path(), "updater.d/20-late.toml", "[updater]\nretries = 3\n");
    write(
        d.path(),
        "updater.d/10-early.toml",
        "[updater]\nretries = 2\nmanifest_url = \"http://h/m.json\"\n",
    );
    write(d.path(), "updater.d/README", "not toml, ignored");
    // The runtime's drop-ins (another program's tables) are not read.
    write(d.path(), "config.d/50-runtime.toml", "[model]\nthreads = 2\n");
    let s = Settings::load(&base).unwrap();
    assert_eq!(s.http.retries, 3);
    assert_eq!(s.updater.max_trials, 2);
    assert_eq!(s.updater.device_class, "a");
    assert_eq!(s.manifest_url().unwrap(), "http://h/m.json");
}

#[test]
fn errors_name_the_file_that_set_the_key() {
    let (d, key) = with_key();
    let base = write(
        d.path(),
        "updater.toml",
        &format!("[updater]\ntrusted_keys = [{:?}]\ndevice_class = \"a\"\n", key.display().to_string()),
    );
    let bad = write(d.path(), "updater.d/50-bad.toml", "[updater]\nretries = 1000\n");
    let err = Settings::load(&base).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Key { path, key, .. } if *path == bad && key == "updater.retries"),
        "{err}"
    );
    std::fs::write(&bad, "[updater]\nthreshold = \"two\"\n").unwrap();
    let err = Settings::load(&base).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Key { path, key, .. } if *path == bad && key == "updater.threshold"),
        "{err}"
    );
    std::fs::write(&bad, "[updater\n").unwrap();
    let err = Settings::load(&base).unwrap_err();
    assert!(matches!(&err, ConfigError::Syntax { path, .. } if *path == bad), "{err}");
    // A key only the base file set is blamed on the base file.
    std::fs::write(&bad, "[updater]\nretries = 1\n").unwrap();
    std::fs::write(&base, "[updater]\ntrusted_keys = []\ndevice_class = \"a\"\n").unwrap();
    let err = Settings::load(&base).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Key { path, key, .. } if *path == base && key == "updater.trusted_keys"),
        "{err}"
    );
}
