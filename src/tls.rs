//! What every TLS side of keel shares: the one crypto provider, PEM files read with errors that
//! name the setting and the file, and telling a TLS failure apart from other connection errors.
//!
//! TLS is rustls with the **ring** provider only, for the API's listener (`api::tls`), PostgreSQL
//! (sqlx) and Redis (the redis crate); aws-lc-rs is never built. [`install_provider`] makes ring the
//! process default, so that a library that builds its rustls configuration from the default never
//! has to choose one (rustls panics when it cannot).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider keel's own TLS configurations are built with: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default crypto provider. Idempotent: the first provider installed
/// stays (an embedding program may have installed its own before).
pub fn install_provider() {
    // Err only says a provider is installed already, which is what this call wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS file that cannot be used. Each names the setting and the file, so that a start-up error
/// says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The I/O error is in the message, not a source: shown in a chain it would come twice.
    #[error("{setting} = {}: cannot read the file: {error}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{setting} = {}: {problem}", path.display())]
    InvalidPem {
        setting: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// The files parse but do not fit together (a key of another certificate, say).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unreadable { .. } => "tls_file_unreadable",
            Error::InvalidPem { .. } => "tls_pem_invalid",
            Error::Invalid(_) => "tls_config_invalid",
        }
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|error| Error::Unreadable {
        setting,
        path: path.to_owned(),
        error,
    })
}

/// The certificates of the PEM file at `path` (the value of `setting`), in file order: at least
/// one, and every `CERTIFICATE` block valid.
pub fn read_certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(setting, path)?;
    let invalid = |problem: String| Error::InvalidPem {
        setting,
        path: path.to_owned(),
        problem,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a valid PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// The private key of the PEM file at `path` (the value of `setting`): PKCS#8, PKCS#1 (RSA) or
/// SEC1 (EC), the first one in the file.
pub fn read_private_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(setting, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::InvalidPem {
        setting,
        path: path.to_owned(),
        problem: format!("holds no valid PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })
}

/// The TLS error behind `error`, if TLS is why it failed: a rustls error anywhere in its chain of
/// sources, also inside an I/O error (as TLS streams report them) or a shared `Arc` (as the Redis
/// client keeps them).
pub fn tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = tls_error(inner) {
                return Some(found);
            }
        }
        if let Some(shared) = e.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            if let Some(found) = tls_error(shared.as_ref()) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_error_is_found_inside_io_errors_and_shared_ones_and_nothing_else_is() {
        let tls = || rustls::Error::General("handshake".into());
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls());
        assert!(tls_error(&io).is_some());
        let shared: Arc<dyn std::error::Error + Send + Sync> = Arc::new(io);
        assert!(tls_error(&shared).is_some());
        let wrapped = anyhow::Error::new(std::io::Error::other(tls())).context("cannot connect");
        assert!(tls_error(wrapped.as_ref()).is_some());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(tls_error(&refused).is_none());
    }

    #[test]
    fn file_errors_name_the_setting_and_the_file() {
        let dir = std::env::temp_dir().join(format!("keel-tls-unit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = read_certificates("api.tls.cert_file", &missing).unwrap_err();
        assert_eq!(err.code(), "tls_file_unreadable");
        let shown = err.to_string();
        assert!(shown.starts_with("api.tls.cert_file = "), "{shown}");
        assert!(shown.contains("missing.pem"), "{shown}");

        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not pem at all\n").unwrap();
        let err = read_certificates("relay.redis.tls_ca_file", &garbage).unwrap_err();
        assert_eq!(err.code(), "tls_pem_invalid");
        assert!(err.to_string().contains("relay.redis.tls_ca_file"), "{err}");
        let err = read_private_key("api.tls.key_file", &garbage).unwrap_err();
        assert_eq!(err.code(), "tls_pem_invalid");
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
