//! Support for the TLS tests: a throwaway PKI made with the `openssl` command at test time, a
//! PostgreSQL 15 and a redis-server of the test's own speaking TLS on loopback ports (each
//! stopped and removed on drop, also when the test fails), and a raw HTTPS/1.1 client that shows
//! what a handshake negotiated.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use uuid::Uuid;

use crate::helpers::eventually;

/// Runs a command to success, or panics with its output.
pub fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A scratch folder, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("keel-test-{name}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority and what it signed, as PEM files in a scratch folder: `ca.pem`,
/// `<name>.pem` and `<name>.key`. Keys are EC P-256.
pub struct Pki {
    pub dir: Scratch,
    /// The CA's name (its files are `<name>.pem`, `<name>.key`).
    ca: String,
}

impl Pki {
    /// A new CA, "keel test CA <label>".
    pub fn new(label: &str) -> Self {
        let dir = Scratch::new(&format!("pki-{label}"));
        let pki = Self {
            dir,
            ca: "ca".into(),
        };
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN=keel test CA {label}"))
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(pki.key(&pki.ca))
            .arg("-out")
            .arg(pki.cert(&pki.ca)));
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.cert(&self.ca)
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.path(&format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.path(&format!("{name}.key"))
    }

    /// A server certificate `name` for 127.0.0.1 and `localhost` (127.0.0.2 is not in it), with
    /// serial number `serial`.
    pub fn server(&self, name: &str, serial: u32) -> &Self {
        self.sign(
            name,
            "/CN=localhost",
            serial,
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
    }

    /// A client certificate `name` with common name `cn`, and `client.example` and
    /// `spiffe://keel/test` as its alternative names.
    pub fn client(&self, name: &str, cn: &str) -> &Self {
        self.sign(
            name,
            &format!("/CN={cn}/O=keel tests"),
            7,
            "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:client.example,URI:spiffe://keel/test\n",
        )
    }

    fn sign(&self, name: &str, subject: &str, serial: u32, extensions: &str) -> &Self {
        let csr = self.dir.path(&format!("{name}.csr"));
        let ext = self.dir.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-subj", subject, "-keyout"])
            .arg(self.key(name))
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(self.ca())
            .arg("-CAkey")
            .arg(self.key(&self.ca))
            .arg("-set_serial")
            .arg(format!("{serial:#x}"))
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(self.cert(name)));
        self
    }

    /// A rustls client configuration that trusts this CA, speaks `versions`, and presents the
    /// client certificate `identity` of `identity_pki` if given.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        identity: Option<(&Pki, &str)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder_with_provider(keel::tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((pki, name)) => {
                let chain = CertificateDer::pem_file_iter(pki.cert(name))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let key = PrivateKeyDer::from_pem_file(pki.key(name)).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

pub const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
pub const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub const ANY_TLS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS connection to `addr` checked as `127.0.0.1`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config).connect(name, tcp).await
}

/// The serial number of the certificate the server presented on `stream`, as bytes.
pub fn server_serial(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    use x509_cert::der::Decode;
    let leaf = &stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0];
    x509_cert::Certificate::from_der(leaf)
        .unwrap()
        .tbs_certificate
        .serial_number
        .as_bytes()
        .to_vec()
}

/// One HTTP/1.1 `GET path` on `stream`, kept alive: the status and the body. An error if the
/// connection fails or closes first.
pub async fn get<S>(stream: &mut S, path: &str) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    read_response(stream).await
}

/// Reads one response with a `content-length` body.
pub async fn read_response<S>(stream: &mut S) -> std::io::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Ok((status, body))
}

/// Why a private PostgreSQL cannot be run here, if it cannot: it needs root (to run it as the
/// `postgres` user) and PostgreSQL 15's server binaries.
pub fn postgres_unavailable() -> Option<String> {
    if !Path::new(PG_BIN).join("initdb").exists() {
        return Some(format!("no PostgreSQL server binaries in {PG_BIN}"));
    }
    let uid = run(Command::new("id").arg("-u"));
    if uid.trim() != "0" || Command::new("runuser").arg("--version").output().is_err() {
        return Some("not root, or no runuser: cannot run PostgreSQL as the postgres user".into());
    }
    None
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL 15 of the test's own on a free port on 127.0.0.1 and 127.0.0.2 (trust
/// authentication, user `postgres`), with `ssl = on` and the server certificate `server` of
/// `pki`. Stopped and removed on drop.
pub struct PgServer {
    pub port: u16,
    dir: Scratch,
}

impl PgServer {
    pub fn start(pki: &Pki, server: &str) -> Self {
        Self::start_with(Some((pki, server)))
    }

    /// Without TLS: for tests that need a server of their own for another reason (a process
    /// they freeze holds back the log horizon of every database on its server).
    pub fn start_plain() -> Self {
        Self::start_with(None)
    }

    fn start_with(tls: Option<(&Pki, &str)>) -> Self {
        let dir = Scratch::new("postgres");
        let port = free_port();
        let data = dir.path("data");
        // The server runs as `postgres`: it owns its folder, key and certificate.
        if let Some((pki, server)) = tls {
            for file in ["server.pem", "server.key"] {
                let from = if file.ends_with("pem") {
                    pki.cert(server)
                } else {
                    pki.key(server)
                };
                std::fs::copy(from, dir.path(file)).unwrap();
            }
            run(Command::new("chmod")
                .arg("0600")
                .arg(dir.path("server.key")));
        }
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir.0));
        let as_postgres = |program: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(Path::new(PG_BIN).join(program));
            c
        };
        run(as_postgres("initdb").arg("-D").arg(&data).args([
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        let append = |file: &str, text: String| {
            let path = data.join(file);
            let mut old = std::fs::read_to_string(&path).unwrap();
            old.push_str(&text);
            std::fs::write(&path, old).unwrap();
        };
        append("pg_hba.conf", "host all all 127.0.0.0/8 trust\n".into());
        // In the file, not on the command line, so that a test can turn ssl off with ALTER
        // SYSTEM (command-line settings would beat it).
        if tls.is_some() {
            append(
                "postgresql.conf",
                format!(
                    "ssl = on\nssl_cert_file = '{dir}/server.pem'\nssl_key_file = '{dir}/server.key'\n",
                    dir = dir.0.display()
                ),
            );
        }
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1,127.0.0.2 -c fsync=off",
            dir = dir.0.display()
        );
        let server = Self { port, dir };
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(server.dir.path("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]));
        server
    }

    /// A URL for database `database` on `host` with `query` (such as `sslmode=verify-full`).
    pub fn url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@{host}:{}/{database}?{query}",
            self.port
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A redis-server of the test's own speaking only TLS on a free loopback port, with the server
/// certificate `server` of `pki`, not asking clients for certificates. Killed on drop.
pub struct RedisTls {
    pub port: u16,
    child: Child,
    _dir: Scratch,
}

impl RedisTls {
    pub async fn start(pki: &Pki, server: &str) -> Self {
        let dir = Scratch::new("redis-tls");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(pki.cert(server))
            .arg("--tls-key-file")
            .arg(pki.key(server))
            .arg("--tls-ca-cert-file")
            .arg(pki.ca())
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = Self {
            port,
            child,
            _dir: dir,
        };
        eventually(
            Duration::from_secs(20),
            "redis-server to listen for tls",
            || async { TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop) },
        )
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
