//! A real PostgreSQL server for the tests: `initdb` into a temporary folder and `postgres` on a
//! free port, as the `postgres` user when the tests run as root (the server refuses root).
//! Stopped (SIGTERM, then SIGKILL) when dropped. Panics — never skips — when it cannot start.
//!
//! [`Postgres::start_tls`] serves TLS only, with a certificate from a throwaway CA ([`Ca`], made
//! with the `openssl` command line).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::emulator::free_port;

/// A running server with a database `schedwatch` and trust authentication on loopback.
pub struct Postgres {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// The CA that signed the server's certificate, when it serves TLS.
    ca: Option<Ca>,
}

/// A throwaway certificate authority: a self-signed CA certificate and its key, in PEM files.
pub struct Ca {
    /// The CA's certificate: what a client trusts (`ca_file`).
    pub cert: PathBuf,
    key: PathBuf,
}

/// Runs `openssl args…` in `dir`; panics with its stderr when it fails or is not installed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("the openssl command line does not run ({e}): the TLS tests need it to make their certificates (Debian: apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ca {
    /// A new CA named `name`, its files `name.crt` and `name.key` in `dir`. P-256 keys: quick
    /// to make, and rustls takes them.
    pub fn generate(dir: &Path, name: &str) -> Ca {
        let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &format!("/CN=schedwatch tests {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// A server certificate and key signed by this CA, for `127.0.0.1` and `localhost` (the
    /// names a client on loopback checks): `server.crt` and `server.key` in `dir`.
    fn sign_server(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                &self.cert.display().to_string(),
                "-CAkey",
                &self.key.display().to_string(),
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        (dir.join("server.crt"), dir.join("server.key"))
    }
}

/// The folder of the server binaries: `pg_config --bindir`, else Debian's newest.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").is_file());
    versions.sort();
    versions.pop().expect(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: scripts/test installs Debian's postgresql",
    )
}

/// Runs `cmd` to its end; panics with its stderr when it fails.
fn succeed(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args…`, as `postgres` when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// initdb and start on a free port; waits until it accepts connections.
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// [`Postgres::start`], serving TLS only: `ssl = on` with a certificate for `127.0.0.1` and
    /// `localhost` signed by a new CA ([`Postgres::ca_file`]), and a pg_hba.conf of `hostssl`
    /// lines alone, so a connection without TLS is refused.
    pub fn start_tls() -> Postgres {
        Postgres::start_with(true)
    }

    fn start_with(tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("schedwatch-pg-")
            .tempdir()
            .expect("a temporary folder for PostgreSQL");
        // Made before the chown below, so the server's key ends up the server's.
        let certs = tls.then(|| {
            let ca = Ca::generate(dir.path(), "ca");
            let (cert, key) = ca.sign_server(dir.path());
            (ca, cert, key)
        });
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown the PostgreSQL folder");
        }
        let data = dir.path().join("data");
        succeed(
            as_postgres(&bindir().join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]),
            "initdb",
        );
        let ca = certs.map(|(ca, cert, key)| {
            // The server refuses a key others can read.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 0600 the server key");
            append(
                &data.join("postgresql.conf"),
                &format!(
                    "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                    cert.display(),
                    key.display()
                ),
            );
            // TLS or nothing: `hostssl` lines only (no `host`), loopback, trust.
            std::fs::write(
                data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .unwrap();
            ca
        });
        let mut pg = Postgres {
            child: None,
            dir,
            port: free_port(),
            ca,
        };
        pg.restart();
        succeed(
            as_postgres(&bindir().join("createdb")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "schedwatch",
            ]),
            "createdb",
        );
        pg
    }

    /// Starts the server (again, after [`Postgres::stop`]) on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        let child = as_postgres(&bindir().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k", ""])
            .args(["-c", "fsync=on", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "postgres did not start within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Accepting TCP is not accepting queries yet: wait for pg_isready.
        while !as_postgres(&bindir().join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                Instant::now() < end,
                "postgres not ready within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT: connections cut, committed data kept), waits for the exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The server's own pid (runuser, our child, does not pass signals on).
        let server = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| child.id().to_string());
        let _ = Command::new("kill").args(["-INT", &server]).status();
        let end = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > end {
                let _ = Command::new("kill").args(["-KILL", &server]).status();
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stopped means refusing connections.
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "postgres still accepts connections after stop:\n{}",
            self.log()
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/schedwatch`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/schedwatch", self.port)
    }

    /// `postgres://USER@127.0.0.1:PORT/schedwatch`.
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/schedwatch", self.port)
    }

    /// Makes `user` the owner of the test database, logging in with `password` and nothing
    /// else: SCRAM for every user on TCP but `postgres` (the tests' psql), the configuration
    /// reloaded.
    pub fn require_password(&self, user: &str, password: &str) {
        self.sql(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE {user} LOGIN PASSWORD '{password}';
             ALTER DATABASE schedwatch OWNER TO {user};"
        ));
        std::fs::write(
            self.dir.path().join("data/pg_hba.conf"),
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("pg_hba.conf written");
        assert_eq!(self.sql("SELECT pg_reload_conf()"), "t");
        let rules = self.sql("SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'scram-sha-256' AND error IS NULL");
        assert_eq!(rules, "1", "the SCRAM line is in force");
    }

    /// The certificate of the CA that signed the server's, of a server from
    /// [`Postgres::start_tls`].
    pub fn ca_file(&self) -> &Path {
        &self
            .ca
            .as_ref()
            .expect("a server started with start_tls")
            .cert
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// psql on the test database: unaligned, tuples only, stopping at the first error.
    fn psql(&self, sql: &str) -> std::io::Result<std::process::Output> {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                "schedwatch",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
    }

    /// [`Postgres::sql`], or `None` when it fails (the server is down, say).
    pub fn try_sql(&self, sql: &str) -> Option<String> {
        let out = self.psql(sql).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs SQL through psql; its output.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.psql(sql).expect("psql runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
