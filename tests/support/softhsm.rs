//! A SoftHSM2 lab for tests and benches: tokens in a temporary directory (`SOFTHSM2_CONF`),
//! keys made with openssl and imported into as many tokens as asked (as an HSM HA group holds
//! one key on each HSM), a CA and a delegated responder certificate for that key, and
//! `p11-kit server` processes that make a token a network HSM that a test can kill.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The p11-kit client module: a token served by `p11-kit server`.
pub const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
/// The user PIN of every token made here.
pub const PIN: &str = "1234";
const SO_PIN: &str = "12345678";

/// What is missing to run SoftHSM tests, if anything.
pub fn missing_tools() -> Option<String> {
    let mut missing = Vec::new();
    for m in [SOFTHSM_MODULE, P11KIT_CLIENT] {
        if !Path::new(m).exists() {
            missing.push(m.to_owned());
        }
    }
    for tool in ["softhsm2-util", "p11-kit", "openssl"] {
        let found = Command::new(tool)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            missing.push(tool.to_owned());
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Skips the calling test, loudly, when the tools are missing.
#[macro_export]
macro_rules! require_softhsm {
    () => {
        if let Some(m) = $crate::softhsm::missing_tools() {
            eprintln!("\n*** SKIPPED: SoftHSM2 / p11-kit / openssl missing: {m} ***\n");
            return;
        }
    };
}

/// A temporary SoftHSM2 token directory and its config.
pub struct Lab {
    /// The temporary directory; everything lives in it.
    pub dir: tempfile::TempDir,
    /// `SOFTHSM2_CONF`.
    pub conf: PathBuf,
}

/// Key algorithms the lab makes.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// ECDSA P-256.
    P256,
    /// ECDSA P-384.
    P384,
    /// RSA 2048.
    Rsa2048,
}

/// A CA and a delegated responder certificate.
pub struct Pki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Responder certificate (for the HSM key).
    pub responder: PathBuf,
}

impl Lab {
    /// An empty token directory.
    pub fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("tokens dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        let pin = dir.path().join("pin");
        std::fs::write(&pin, format!("{PIN}\n")).expect("pin file");
        set_mode(&pin, 0o600);
        Lab { dir, conf }
    }

    /// A path in the lab.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The file holding [`PIN`].
    pub fn pin_file(&self) -> PathBuf {
        self.path("pin")
    }

    /// Runs a tool with `SOFTHSM2_CONF` set; panics with its output if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new token.
    pub fn token(&self, label: &str) {
        self.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ],
        );
    }

    /// A software key (PKCS#8 PEM) named `name.key`.
    pub fn key(&self, name: &str, kind: KeyKind) -> PathBuf {
        let file = format!("{name}.key");
        let opt = match kind {
            KeyKind::P256 => vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::P384 => vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyKind::Rsa2048 => vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        };
        let mut args = vec!["genpkey"];
        args.extend(opt);
        args.extend(["-out", &file]);
        self.run("openssl", &args);
        self.path(&file)
    }

    /// Imports `key` (private and public objects) into token `token`.
    pub fn import(&self, token: &str, key: &Path, label: &str, id: &str) {
        let key = key.display().to_string();
        self.run(
            "softhsm2-util",
            &[
                "--import", &key, "--token", token, "--label", label, "--id", id, "--pin", PIN,
            ],
        );
    }

    /// A CA (P-256) and a responder certificate for `responder_key`, valid 30 days.
    pub fn pki(&self, responder_key: &Path) -> Pki {
        self.run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=vigil test CA",
                "-days",
                "30",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        std::fs::write(
            self.path("responder.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=OCSPSigning\nnoCheck=ignored\n",
        )
        .expect("ext");
        let key = responder_key.display().to_string();
        self.run(
            "openssl",
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                "/CN=vigil test OCSP responder",
                "-out",
                "responder.csr",
            ],
        );
        self.run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "responder.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "responder.ext",
                "-out",
                "responder.pem",
            ],
        );
        Pki {
            ca: self.path("ca.pem"),
            responder: self.path("responder.pem"),
        }
    }

    /// Serves `token` with `p11-kit server` on a Unix socket in the lab.
    pub fn serve(&self, token: &str) -> P11Server {
        let mut s = P11Server {
            socket: self.path(&format!("{token}.sock")),
            token: token.to_owned(),
            conf: self.conf.clone(),
            child: None,
        };
        s.start();
        s
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A `p11-kit server` exposing one SoftHSM2 token: a network HSM.
pub struct P11Server {
    /// Its socket.
    pub socket: PathBuf,
    token: String,
    conf: PathBuf,
    child: Option<Child>,
}

impl P11Server {
    /// `P11_KIT_SERVER_ADDRESS` for clients.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// Starts (or restarts) the server and waits for its socket.
    pub fn start(&mut self) {
        use std::os::unix::process::CommandExt;
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("p11-kit")
            .args(["server", "-f", "--provider", SOFTHSM_MODULE, "-n"])
            .arg(&self.socket)
            .arg(format!("pkcs11:token={}", self.token))
            .env("SOFTHSM2_CONF", &self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the server forks a p11-kit-remote per connection, and
            // killing the HSM means killing those too.
            .process_group(0)
            .spawn()
            .expect("p11-kit server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "p11-kit server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Freezes the server and every connection it serves (SIGSTOP to its process group):
    /// connections stay open and nothing answers, as with a network HSM gone silent.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`P11Server::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .args([sig, "--", &format!("-{}", child.id())])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill {sig} failed");
        }
    }

    /// Kills the server and every connection it serves (SIGKILL to its process group).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for P11Server {
    fn drop(&mut self) {
        self.kill();
    }
}
