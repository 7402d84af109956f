//! rumqttc options from checked settings: TLS with the configured CA and client certificate
//! (rustls, ring), credentials, keep-alive, a persistent session, and the last will.

use std::sync::Arc;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{MqttSettings, Scheme};
use super::MqttError;

/// Builds the rustls client configuration: the CA file's certificates (else the system's
/// roots) and, when configured, the client certificate and key.
pub fn tls_config(settings: &MqttSettings) -> Result<rustls::ClientConfig, MqttError> {
    let c = &settings.config;
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| MqttError::Tls(format!("ca_file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(MqttError::Tls(format!("ca_file {} holds no certificate", path.display())));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| MqttError::Tls(format!("ca_file {}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&c.cert_file, &c.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| MqttError::Tls(format!("cert_file {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| MqttError::Tls(format!("key_file {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| MqttError::Tls(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The options for a client with id `client_id` and, if given, a retained last will.
pub fn options(
    settings: &MqttSettings,
    client_id: &str,
    clean_session: bool,
    will: Option<(String, Vec<u8>)>,
) -> Result<MqttOptions, MqttError> {
    let c = &settings.config;
    let mut o = MqttOptions::new(client_id, settings.host.clone(), settings.port);
    o.set_keep_alive(c.keepalive);
    o.set_clean_session(clean_session);
    // Results and cache imports can be larger than rumqttc's 10 KiB default.
    o.set_max_packet_size(4 << 20, 4 << 20);
    if settings.scheme == Scheme::Tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls_config(settings)?))));
    }
    if let Some(user) = &c.username {
        let password = match &c.password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| MqttError::Credentials(format!("password_file {}: {e}", path.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            None => String::new(),
        };
        o.set_credentials(user.clone(), password);
    }
    if let Some((topic, payload)) = will {
        o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
    }
    Ok(o)
}
