//! TLS material for the fronts: the certificate chain and private key read from PEM files
//! (every way that can fail has its own precise error), the rustls server configurations for
//! TCP (HTTP/2 and HTTP/1.1 by ALPN) and QUIC (HTTP/3, ALPN `h3`), the same checks for
//! `hapax validate`, and the self-signed development certificate of `hapax gen-cert`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hapax_config::{Config, ConfigErrors, ConfigProblem, positions::PositionIndex};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN of the TCP listener: HTTP/2 preferred, HTTP/1.1 otherwise.
const TCP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of HTTP/3 (RFC 9114).
const H3_ALPN: &[u8] = b"h3";

/// Why a certificate or key cannot be used. Messages name the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: file not found", .path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read: {source}", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate file ({detail})", .path.display())]
    NotCertificate { path: PathBuf, detail: String },
    #[error("{}: not a PEM private key file ({detail})", .path.display())]
    NotKey { path: PathBuf, detail: String },
    #[error("{}: private key cannot be used: {detail}", .path.display())]
    UnusableKey { path: PathBuf, detail: String },
    #[error("{}: private key does not match the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS set-up failed: {0}")]
    Setup(String),
}

/// The ring provider, named explicitly so nothing depends on a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => TlsError::Missing {
            path: path.to_owned(),
        },
        _ => TlsError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })
}

fn pem_detail(error: &pem::Error, what: &str) -> String {
    match error {
        pem::Error::NoItemsFound => format!("no {what} block found"),
        other => other.to_string(),
    }
}

/// A certificate chain and its private key, read and checked against each other.
pub struct CertifiedFiles {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for CertifiedFiles {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl CertifiedFiles {
    /// Reads `cert_path` (one or more `CERTIFICATE` blocks, leaf first) and `key_path`
    /// (PKCS#8, PKCS#1 or SEC1), and checks that the key belongs to the leaf certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_bytes = read(cert_path)?;
        let not_cert = |detail: String| TlsError::NotCertificate {
            path: cert_path.to_owned(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| not_cert(pem_detail(&e, "CERTIFICATE")))?;
        if chain.is_empty() {
            return Err(not_cert("no CERTIFICATE block found".to_owned()));
        }
        let key_bytes = read(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::NotKey {
            path: key_path.to_owned(),
            detail: pem_detail(&e, "PRIVATE KEY"),
        })?;
        let files = Self { chain, key };
        files.certified_key(cert_path, key_path)?;
        Ok(files)
    }

    fn certified_key(&self, cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
        let signing_key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| TlsError::UnusableKey {
                path: key_path.to_owned(),
                detail: e.to_string(),
            })?;
        let certified = CertifiedKey::new(self.chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                Err(TlsError::KeyMismatch {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                })
            }
            Err(other) => Err(TlsError::NotCertificate {
                path: cert_path.to_owned(),
                detail: format!("the first certificate cannot be parsed: {other}"),
            }),
        }
    }

    /// TLS 1.2 and 1.3 for the TCP listener, offering `h2` and `http/1.1`.
    pub fn tcp_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        config.alpn_protocols = TCP_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// TLS 1.3 for QUIC with ALPN `h3`; `early_data` lets resumed clients send 0-RTT data
    /// (quinn wants the early-data limit at 0 or `u32::MAX`).
    pub fn quic_config(&self, early_data: bool) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        config.alpn_protocols = vec![H3_ALPN.to_vec()];
        config.max_early_data_size = if early_data { u32::MAX } else { 0 };
        Ok(config)
    }
}

/// A TLS problem of a configuration and the key that names the file.
#[derive(Debug)]
pub struct TlsProblem {
    pub key: &'static str,
    pub error: TlsError,
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.error)
    }
}

/// The two files of one front, each with the config key that names it.
#[derive(PartialEq, Eq)]
struct FilePair<'c> {
    cert: (&'static str, &'c str),
    key: (&'static str, &'c str),
}

/// `server.tls`'s files.
fn tcp_pair(config: &Config) -> Option<FilePair<'_>> {
    config.server.tls.as_ref().map(|tls| FilePair {
        cert: ("server.tls.cert_file", &tls.cert_file),
        key: ("server.tls.key_file", &tls.key_file),
    })
}

/// HTTP/3's files: its own, else `server.tls`'s (named by the key they were read from).
fn http3_pair<'c>(config: &'c Config) -> Option<FilePair<'c>> {
    let http3 = config.server.http3.as_ref().filter(|h| h.enabled)?;
    let tls = config.server.tls.as_ref();
    let source = |own: (&'static str, &'c str), shared: (&'static str, Option<&'c str>)| match (
        own.1.trim().is_empty(),
        shared.1,
    ) {
        (true, Some(file)) => (shared.0, file),
        _ => own,
    };
    Some(FilePair {
        cert: source(
            ("server.http3.tls_cert_file", &http3.tls_cert_file),
            ("server.tls.cert_file", tls.map(|t| t.cert_file.as_str())),
        ),
        key: source(
            ("server.http3.tls_key_file", &http3.tls_key_file),
            ("server.tls.key_file", tls.map(|t| t.key_file.as_str())),
        ),
    })
}

fn load_pair(pair: &FilePair<'_>) -> Result<CertifiedFiles, TlsProblem> {
    CertifiedFiles::load(Path::new(pair.cert.1), Path::new(pair.key.1)).map_err(|error| {
        let key = match &error {
            TlsError::Missing { path } | TlsError::Unreadable { path, .. } => {
                match path == Path::new(pair.cert.1) {
                    true => pair.cert.0,
                    false => pair.key.0,
                }
            }
            TlsError::NotCertificate { .. } => pair.cert.0,
            _ => pair.key.0,
        };
        TlsProblem { key, error }
    })
}

/// Reads every certificate and key the configuration names (empty names are the config
/// validator's business) and reports each problem once.
pub fn check(config: &Config) -> Vec<TlsProblem> {
    let tcp = tcp_pair(config);
    let http3 = http3_pair(config).filter(|pair| Some(pair) != tcp.as_ref());
    [tcp, http3]
        .into_iter()
        .flatten()
        .filter(|pair| !pair.cert.1.trim().is_empty() && !pair.key.1.trim().is_empty())
        .filter_map(|pair| load_pair(&pair).err())
        .collect()
}

/// The TLS material of both fronts, loaded once at start-up.
pub struct FrontTls {
    /// For the TCP listener (`server.tls`), if configured.
    pub tcp: Option<CertifiedFiles>,
    /// For HTTP/3, if enabled.
    pub http3: Option<CertifiedFiles>,
}

/// Loads what [`check`] checks; the first problem stops start-up.
pub fn load(config: &Config) -> Result<FrontTls, TlsProblem> {
    let tcp_files = tcp_pair(config);
    let tcp = tcp_files.as_ref().map(load_pair).transpose()?;
    let http3 = match (http3_pair(config), &tcp) {
        (Some(pair), Some(shared)) if Some(&pair) == tcp_files.as_ref() => Some(shared.clone()),
        (Some(pair), _) => Some(load_pair(&pair)?),
        (None, _) => None,
    };
    Ok(FrontTls { tcp, http3 })
}

/// [`check`]'s problems in the shape of configuration errors, located in `text` (the file
/// `origin`) where the key is written.
pub fn as_config_errors(origin: &str, text: &str, problems: &[TlsProblem]) -> ConfigErrors {
    let index = PositionIndex::build(text);
    ConfigErrors {
        origin: origin.to_owned(),
        problems: problems
            .iter()
            .map(|problem| {
                let position = index.get(problem.key);
                ConfigProblem {
                    path: problem.key.to_owned(),
                    line: position.map(|p| p.line),
                    column: position.map(|p| p.column),
                    message: problem.error.to_string(),
                }
            })
            .collect(),
    }
}

/// A self-signed development certificate (`cert.pem`) and its key (`key.pem`) for `hosts`
/// (DNS names or IP addresses; default `localhost`, `127.0.0.1`, `::1`).
pub struct DevCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCertificate {
    pub fn generate(hosts: &[String]) -> Result<Self, rcgen::Error> {
        let names = match hosts.is_empty() {
            true => vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            false => hosts.to_vec(),
        };
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hapax development certificate");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `DIR/cert.pem` and `DIR/key.pem` (the key readable by its owner only); refuses
    /// to replace existing files unless `force`.
    pub fn write(&self, dir: &Path, force: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
        use anyhow::Context;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        for path in [&cert, &key] {
            if !force && path.exists() {
                anyhow::bail!("{} exists (use --force to replace it)", path.display());
            }
        }
        std::fs::write(&cert, &self.cert_pem)
            .with_context(|| format!("writing {}", cert.display()))?;
        write_private(&key, self.key_pem.as_bytes())
            .with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn write_pair(dir: &Path, name: &str, cert: &DevCertificate) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}-cert.pem"));
        let k = dir.join(format!("{name}-key.pem"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        (c, k)
    }

    #[test]
    fn each_bad_file_has_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let one = DevCertificate::generate(&[]).unwrap();
        let two = DevCertificate::generate(&["example.test".into()]).unwrap();
        let (cert, key) = write_pair(dir.path(), "one", &one);
        let (_, other_key) = write_pair(dir.path(), "two", &two);
        assert!(CertifiedFiles::load(&cert, &key).is_ok());
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            CertifiedFiles::load(&missing, &key),
            Err(TlsError::Missing { .. })
        ));
        assert!(matches!(
            CertifiedFiles::load(&key, &key),
            Err(TlsError::NotCertificate { .. })
        ));
        assert!(matches!(
            CertifiedFiles::load(&cert, &cert),
            Err(TlsError::NotKey { .. })
        ));
        let error = CertifiedFiles::load(&cert, &other_key).err().unwrap();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
        assert!(error.to_string().contains("does not match"), "{error}");
        assert!(matches!(
            CertifiedFiles::load(dir.path(), &key),
            Err(TlsError::Unreadable { .. })
        ));
    }

    #[test]
    fn quic_config_speaks_h3_and_tcp_offers_h2() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", &DevCertificate::generate(&[]).unwrap());
        let files = CertifiedFiles::load(&cert, &key).unwrap();
        let quic = files.quic_config(true).unwrap();
        assert_eq!(quic.alpn_protocols, vec![b"h3".to_vec()]);
        assert_eq!(quic.max_early_data_size, u32::MAX);
        assert_eq!(files.tcp_config().unwrap().alpn_protocols[0], b"h2");
    }
}
