//! TLS on the API's listener, from `api.tls` (see [`ApiTlsConfig`]): rustls with ring, TLS 1.2
//! and 1.3 only, HTTP/1.1 by ALPN, and client certificates verified against
//! `api.tls.client_ca_file` when it is set (optional or required).
//!
//! [`ServerTls`] holds the current rustls configuration. Each new connection takes the one
//! current when it is accepted and keeps it, so [`ServerTls::reload`] (what SIGHUP calls, see
//! [`reload_on_hangup`]) changes the certificate for new handshakes without touching open
//! connections; files that do not load leave the current configuration in place.

use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use x509_cert::der::Decode;

use super::server::PeerCertificate;
use crate::config::{ApiTlsConfig, ClientAuth};
use crate::shutdown::Shutdown;
use crate::tls::{self, Error};

/// The API's TLS configuration, reloadable. Share it in an `Arc`: the server takes one for its
/// handshakes, and whoever reloads (the SIGHUP task, a test) keeps another.
pub struct ServerTls {
    settings: ApiTlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files `settings` names. An error names the setting and the file.
    pub fn load(settings: &ApiTlsConfig) -> Result<Self, Error> {
        let (config, certificate) = server_config(settings)?;
        tracing::info!(%certificate, "api tls certificate loaded");
        Ok(Self {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again and, if they load, serves new handshakes with them; connections
    /// already open keep the certificate they were accepted with. On error nothing changes.
    pub fn reload(&self) -> Result<(), Error> {
        let (config, certificate) = server_config(&self.settings)?;
        // A poisoned lock only means a reader panicked while cloning an Arc: the value is whole.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        tracing::info!(%certificate, "api tls certificate reloaded");
        Ok(())
    }

    /// An acceptor with the configuration current now, for one connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(current.clone())
    }
}

/// Until `shutdown`: reloads `tls` on every SIGHUP, logging the outcome. A certificate that does
/// not load is logged as an error and the current one stays.
pub async fn reload_on_hangup(tls: Arc<ServerTls>, shutdown: Shutdown) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; the tls certificate cannot be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => if got.is_none() { return },
                _ = shutdown.wait() => return,
            }
            if let Err(e) = tls.reload() {
                tracing::error!(
                    error = %e,
                    code = e.code(),
                    "cannot reload the tls certificate; new connections keep getting the current one"
                );
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        shutdown.wait().await;
    }
}

/// The rustls configuration `settings` describe, and its certificate's subject and serial number
/// for logs.
fn server_config(settings: &ApiTlsConfig) -> Result<(ServerConfig, String), Error> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Err(Error::Invalid(
            "set both api.tls.cert_file and api.tls.key_file for TLS".into(),
        ));
    };
    let chain = tls::read_certificates("api.tls.cert_file", cert_file)?;
    let key = tls::read_private_key("api.tls.key_file", key_file)?;
    let certificate = match x509_cert::Certificate::from_der(&chain[0]) {
        Ok(c) => format!(
            "subject {}, serial {}",
            c.tbs_certificate.subject, c.tbs_certificate.serial_number
        ),
        Err(e) => format!("unreadable: {e}"),
    };
    let provider = tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Invalid(format!("the TLS provider refuses TLS 1.2 and 1.3: {e}")))?;
    let builder = match &settings.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in tls::read_certificates("api.tls.client_ca_file", ca_file)? {
                roots.add(ca).map_err(|e| Error::InvalidPem {
                    setting: "api.tls.client_ca_file",
                    path: ca_file.to_owned(),
                    problem: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier.build().map_err(|e| {
                Error::Invalid(format!(
                    "api.tls.client_ca_file = {}: cannot verify clients with it: {e}",
                    ca_file.display()
                ))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Error::Invalid(format!(
            "api.tls.cert_file = {} and api.tls.key_file = {} do not make a usable certificate: {e}",
            cert_file.display(),
            key_file.display()
        ))
    })?;
    // The server speaks HTTP/1.1 only; a client offering only h2 is refused at the handshake
    // rather than misread.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, certificate))
}

/// The identity in a client's verified certificate (its DER): the subject's common name and the
/// DNS and URI alternative names. `None` if it does not parse, which rustls, having verified it,
/// makes unlikely.
pub(crate) fn peer_certificate(der: &[u8]) -> Option<PeerCertificate> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;

    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let subject = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|attr| attr.oid == x509_cert::der::oid::db::rfc4519::CN)
        .and_then(|attr| directory_string(&attr.value))
        .unwrap_or_default();
    let sans = match tbs.get::<SubjectAltName>() {
        Ok(Some((_critical, names))) => names
            .0
            .iter()
            .filter_map(|name| match name {
                GeneralName::DnsName(dns) => Some(dns.as_str().to_owned()),
                GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(PeerCertificate { subject, sans })
}

/// An X.520 directory string's text (UTF8String, PrintableString or IA5String).
fn directory_string(value: &x509_cert::der::Any) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_owned())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .ok()
}
