//! The frames between vigil and a `vigil pkcs11-host` process (see [`super::host`]).
//!
//! A frame is a 4-byte big-endian body length, then the body: a one-byte tag, an 8-byte
//! big-endian call id (0 for the greeting and the setup; a response carries its request's id),
//! and the tag's fields. Integers are big-endian; byte strings and text are a 4-byte length
//! and the bytes (text is UTF-8); an optional field is a 0 or 1 byte, then the value.
//!
//! Every length is checked against a named bound ([`crate::limits`]) before anything is
//! allocated for it, and a frame whose fields do not use up its body exactly is refused: a
//! malformed or oversized frame is a [`FrameError`], never a panic. Both ends are vigil, but
//! the child runs a vendor's library in its address space, so the parent reads its frames as
//! it would read the network.
//!
//! The PIN travels in the [`Setup`] frame only, over the pipe: never in argv or the
//! environment, and never logged. Buffers that held it are zeroized.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{
    HsmError, KeyDescription, KeySelector, ObjectListing, RsaMechanism, TokenListing, TokenSelector,
};
use crate::config::LogFormat;
use crate::limits::{
    MAX_HOST_FRAME_BYTES, MAX_HOST_KEY_BYTES, MAX_HOST_LIST_ITEMS, MAX_HOST_PIN_BYTES,
    MAX_HOST_SIGN_MESSAGE_BYTES, MAX_HOST_TEXT_BYTES,
};
use crate::signer::SignatureAlgorithm;

/// Bumped whenever a frame changes; the parent refuses a host of another version (an upgrade
/// that replaced the binary under a running vigil).
pub const PROTOCOL_VERSION: u32 = 1;

/// The first bytes the host writes: a parent that started the wrong program finds out at once.
pub const MAGIC: [u8; 8] = *b"vigilp11";

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The pipe failed or closed.
    #[error("the host pipe: {0}")]
    Io(#[from] io::Error),
    /// The pipe closed between frames.
    #[error("the host pipe closed")]
    Closed,
    /// A length above its bound.
    #[error("{what} of {len} bytes is over the bound of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Its bound.
        max: usize,
    },
    /// Anything else that does not follow the format.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}

// === frames ===

/// A PIN on its way through the pipe: zeroized when dropped, and `Debug` shows no digit.
#[derive(Clone, Default)]
pub struct PinBytes(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for PinBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinBytes(redacted)")
    }
}

impl std::ops::Deref for PinBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// What the host is to run: one key, or a module for `vigil hsm list`.
#[derive(Debug)]
pub enum Setup {
    /// One key (a `[[hsm]]` entry); `module_env` is the host's environment already.
    Key {
        /// Name for logs.
        name: String,
        /// The module file.
        module: PathBuf,
        /// The token.
        token: TokenSelector,
        /// The key.
        key: KeySelector,
        /// Most signing sessions.
        sessions: u32,
        /// RSA mechanism choice.
        rsa_mechanism: RsaMechanism,
        /// The public key the token's key must have.
        expected: Option<Vec<u8>>,
        /// The user PIN.
        pin: PinBytes,
    },
    /// A module only.
    Module {
        /// The module file.
        module: PathBuf,
    },
}

/// The first frame from the parent: what to run and how to log.
#[derive(Debug)]
pub struct SetupFrame {
    /// What to run.
    pub setup: Setup,
    /// `log.filter`.
    pub log_filter: String,
    /// `log.format`.
    pub log_format: LogFormat,
}

/// A call from the parent.
#[derive(Debug)]
pub enum Request {
    /// [`super::Pkcs11Key::connect`].
    Connect,
    /// [`super::Pkcs11Key::sign`], waiting up to `wait_ms` for a session.
    Sign {
        /// The message (hashed by the host for ECDSA and `CKM_RSA_PKCS`).
        message: Vec<u8>,
        /// Milliseconds to wait for a free session.
        wait_ms: u32,
    },
    /// [`super::Pkcs11Key::recover`].
    Recover {
        /// Milliseconds calls in flight get before the module is loaded afresh.
        wait_ms: u32,
    },
    /// [`super::Pkcs11Key::disconnect`].
    Disconnect,
    /// [`super::Module::info`].
    Info,
    /// [`super::list_tokens`], with the PINs of the tokens to log in to, by label.
    ListTokens {
        /// (token label, PIN).
        pins: Vec<(String, PinBytes)>,
    },
}

/// An answer from the host.
#[derive(Debug)]
pub enum Response {
    /// The greeting, before anything else.
    Hello {
        /// [`PROTOCOL_VERSION`] of the host.
        version: u32,
    },
    /// Set up (or a call without a result done).
    Done,
    /// A connected key.
    Described(KeyDescription),
    /// A signature.
    Signature(Vec<u8>),
    /// Text (the library info).
    Text(String),
    /// The tokens of a module.
    Tokens(Vec<TokenListing>),
    /// The call failed.
    Error(HsmError),
}

// === tags ===

const T_SETUP_KEY: u8 = 1;
const T_SETUP_MODULE: u8 = 2;
const T_CONNECT: u8 = 10;
const T_SIGN: u8 = 11;
const T_RECOVER: u8 = 12;
const T_DISCONNECT: u8 = 13;
const T_INFO: u8 = 14;
const T_LIST: u8 = 15;
const T_HELLO: u8 = 100;
const T_DONE: u8 = 101;
const T_DESCRIBED: u8 = 102;
const T_SIGNATURE: u8 = 103;
const T_TEXT: u8 = 104;
const T_TOKENS: u8 = 105;
const T_ERROR: u8 = 106;

/// The mechanism names a [`KeyDescription`] can carry (they are `&'static str`).
const MECHANISM_NAMES: [&str; 3] = [
    "CKM_ECDSA",
    "CKM_SHA256_RSA_PKCS",
    "CKM_RSA_PKCS (DigestInfo)",
];

// === writing ===

/// A frame body being built. Zeroized when dropped: a setup frame holds the PIN.
struct Body(Zeroizing<Vec<u8>>);

impl Body {
    fn new(tag: u8, id: u64) -> Self {
        let mut v = Zeroizing::new(Vec::with_capacity(64));
        v.push(tag);
        v.extend_from_slice(&id.to_be_bytes());
        Body(v)
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn bytes(&mut self, v: &[u8]) {
        // Lengths are checked against their bounds when read; a u32 covers every bound.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }

    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
        }
    }

    fn opt_text(&mut self, v: Option<&str>) {
        self.opt_bytes(v.map(str::as_bytes));
    }

    fn write_to(self, w: &mut impl Write) -> Result<(), FrameError> {
        if self.0.len() > MAX_HOST_FRAME_BYTES {
            return Err(FrameError::TooLong {
                what: "a frame",
                len: self.0.len(),
                max: MAX_HOST_FRAME_BYTES,
            });
        }
        // The length fits: MAX_HOST_FRAME_BYTES is below u32::MAX.
        w.write_all(&(self.0.len() as u32).to_be_bytes())?;
        w.write_all(&self.0)?;
        w.flush()?;
        Ok(())
    }
}

fn token_selector(b: &mut Body, t: &TokenSelector) {
    match t {
        TokenSelector::Label(l) => {
            b.u8(0);
            b.bytes(l.as_bytes());
        }
        TokenSelector::Slot(s) => {
            b.u8(1);
            b.u64(*s);
        }
    }
}

fn rsa_mechanism_code(m: RsaMechanism) -> u8 {
    match m {
        RsaMechanism::Auto => 0,
        RsaMechanism::Sha256RsaPkcs => 1,
        RsaMechanism::RsaPkcs => 2,
    }
}

fn algorithm_code(a: SignatureAlgorithm) -> u8 {
    match a {
        SignatureAlgorithm::EcdsaP256Sha256 => 0,
        SignatureAlgorithm::EcdsaP384Sha384 => 1,
        SignatureAlgorithm::RsaPkcs1Sha256 => 2,
    }
}

/// Writes the setup frame.
pub fn write_setup(w: &mut impl Write, s: &SetupFrame) -> Result<(), FrameError> {
    let mut b;
    match &s.setup {
        Setup::Key {
            name,
            module,
            token,
            key,
            sessions,
            rsa_mechanism,
            expected,
            pin,
        } => {
            b = Body::new(T_SETUP_KEY, 0);
            b.bytes(name.as_bytes());
            b.bytes(std::os::unix::ffi::OsStrExt::as_bytes(module.as_os_str()));
            token_selector(&mut b, token);
            b.opt_text(key.label.as_deref());
            b.opt_bytes(key.id.as_deref());
            b.u32(*sessions);
            b.u8(rsa_mechanism_code(*rsa_mechanism));
            b.opt_bytes(expected.as_deref());
            b.bytes(pin);
        }
        Setup::Module { module } => {
            b = Body::new(T_SETUP_MODULE, 0);
            b.bytes(std::os::unix::ffi::OsStrExt::as_bytes(module.as_os_str()));
        }
    }
    b.bytes(s.log_filter.as_bytes());
    b.u8(match s.log_format {
        LogFormat::Text => 0,
        LogFormat::Json => 1,
    });
    b.write_to(w)
}

/// Writes a request.
pub fn write_request(w: &mut impl Write, id: u64, r: &Request) -> Result<(), FrameError> {
    let b = match r {
        Request::Connect => Body::new(T_CONNECT, id),
        Request::Sign { message, wait_ms } => {
            let mut b = Body::new(T_SIGN, id);
            b.u32(*wait_ms);
            b.bytes(message);
            b
        }
        Request::Recover { wait_ms } => {
            let mut b = Body::new(T_RECOVER, id);
            b.u32(*wait_ms);
            b
        }
        Request::Disconnect => Body::new(T_DISCONNECT, id),
        Request::Info => Body::new(T_INFO, id),
        Request::ListTokens { pins } => {
            let mut b = Body::new(T_LIST, id);
            b.u32(u32::try_from(pins.len()).unwrap_or(u32::MAX));
            for (label, pin) in pins {
                b.bytes(label.as_bytes());
                b.bytes(pin);
            }
            b
        }
    };
    b.write_to(w)
}

fn error_code(e: &HsmError) -> u8 {
    match e {
        HsmError::Pin(_) => 0,
        HsmError::Config(_) => 1,
        HsmError::Lost(_) => 2,
        HsmError::Failed(_) => 3,
        HsmError::Busy(_) => 4,
    }
}

/// Writes a response.
pub fn write_response(w: &mut impl Write, id: u64, r: &Response) -> Result<(), FrameError> {
    let b = match r {
        Response::Hello { version } => {
            let mut b = Body::new(T_HELLO, id);
            b.0.extend_from_slice(&MAGIC);
            b.u32(*version);
            b
        }
        Response::Done => Body::new(T_DONE, id),
        Response::Described(d) => {
            let mut b = Body::new(T_DESCRIBED, id);
            b.bytes(d.token_label.as_bytes());
            b.u64(d.slot);
            b.u8(algorithm_code(d.algorithm));
            b.bytes(d.mechanism.as_bytes());
            b.bytes(&d.public_key);
            b
        }
        Response::Signature(s) => {
            let mut b = Body::new(T_SIGNATURE, id);
            b.bytes(s);
            b
        }
        Response::Text(t) => {
            let mut b = Body::new(T_TEXT, id);
            b.bytes(t.as_bytes());
            b
        }
        Response::Tokens(tokens) => {
            let mut b = Body::new(T_TOKENS, id);
            b.u32(u32::try_from(tokens.len()).unwrap_or(u32::MAX));
            for t in tokens {
                b.u64(t.slot);
                b.bytes(t.label.as_bytes());
                b.bytes(t.model.as_bytes());
                b.bytes(t.serial.as_bytes());
                b.u8(u8::from(t.initialized));
                b.u8(u8::from(t.logged_in));
                b.opt_text(t.login_error.as_deref());
                b.opt_text(t.error.as_deref());
                b.u32(u32::try_from(t.keys.len()).unwrap_or(u32::MAX));
                for k in &t.keys {
                    b.u8(u8::from(k.class == "public"));
                    b.bytes(k.label.as_bytes());
                    b.bytes(k.id.as_bytes());
                    b.bytes(k.key_type.as_bytes());
                }
            }
            b
        }
        Response::Error(e) => {
            let mut b = Body::new(T_ERROR, id);
            b.u8(error_code(e));
            match e {
                HsmError::Busy(n) => b.u64(*n as u64),
                HsmError::Pin(t)
                | HsmError::Config(t)
                | HsmError::Lost(t)
                | HsmError::Failed(t) => b.bytes(t.as_bytes()),
            }
            b
        }
    };
    b.write_to(w)
}

// === reading ===

/// Reads one frame body: `Ok(None)` when the pipe closed cleanly before a frame began.
/// Memory grows with the bytes that arrive, not with the length a header claims.
fn read_body(r: &mut impl Read) -> Result<Option<Zeroizing<Vec<u8>>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(malformed("the pipe closed inside a frame length")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HOST_FRAME_BYTES {
        return Err(FrameError::TooLong {
            what: "a frame",
            len,
            max: MAX_HOST_FRAME_BYTES,
        });
    }
    if len < 9 {
        return Err(malformed(format!(
            "a frame of {len} bytes (the header is 9)"
        )));
    }
    let mut body = Zeroizing::new(Vec::with_capacity(len.min(64 * 1024)));
    let read = r.take(len as u64).read_to_end(&mut body)?;
    if read != len {
        return Err(malformed(format!(
            "the pipe closed after {read} of a {len}-byte frame"
        )));
    }
    Ok(Some(body))
}

/// A cursor over a frame body.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(malformed(format!("the frame ends inside {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], FrameError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(FrameError::TooLong { what, len, max });
        }
        self.take(len, what)
    }

    fn text(&mut self, what: &'static str) -> Result<String, FrameError> {
        let b = self.bytes(what, MAX_HOST_TEXT_BYTES)?;
        String::from_utf8(b.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
    }

    fn flag(&mut self, what: &str) -> Result<bool, FrameError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(malformed(format!("{what}: {other} is neither 0 nor 1"))),
        }
    }

    fn opt_bytes(&mut self, what: &'static str, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
        Ok(if self.flag(what)? {
            Some(self.bytes(what, max)?.to_vec())
        } else {
            None
        })
    }

    fn opt_text(&mut self, what: &'static str) -> Result<Option<String>, FrameError> {
        Ok(if self.flag(what)? {
            Some(self.text(what)?)
        } else {
            None
        })
    }

    fn count(&mut self, what: &'static str) -> Result<usize, FrameError> {
        let n = self.u32(what)? as usize;
        if n > MAX_HOST_LIST_ITEMS {
            return Err(FrameError::TooLong {
                what,
                len: n,
                max: MAX_HOST_LIST_ITEMS,
            });
        }
        Ok(n)
    }

    fn path(&mut self) -> Result<PathBuf, FrameError> {
        let b = self.bytes("the module path", MAX_HOST_TEXT_BYTES)?;
        Ok(PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b),
        ))
    }

    fn end(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} bytes after the last field",
                self.rest.len()
            )))
        }
    }
}

/// Splits a body into tag, id and fields.
fn header(body: &[u8]) -> (u8, u64, Fields<'_>) {
    // read_body guarantees the 9 header bytes.
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[1..9]);
    (body[0], u64::from_be_bytes(id), Fields { rest: &body[9..] })
}

/// Reads the setup frame (the host's first input).
pub fn read_setup(r: &mut impl Read) -> Result<SetupFrame, FrameError> {
    let body = read_body(r)?.ok_or(FrameError::Closed)?;
    let (tag, _, mut f) = header(&body);
    let setup = match tag {
        T_SETUP_KEY => {
            let name = f.text("the key name")?;
            let module = f.path()?;
            let token = match f.u8("the token selector")? {
                0 => TokenSelector::Label(f.text("the token label")?),
                1 => TokenSelector::Slot(f.u64("the slot")?),
                other => return Err(malformed(format!("token selector {other}"))),
            };
            let key = KeySelector {
                label: f.opt_text("the key label")?,
                id: f.opt_bytes("the key id", MAX_HOST_KEY_BYTES)?,
            };
            let sessions = f.u32("the sessions")?;
            let rsa_mechanism = match f.u8("the RSA mechanism")? {
                0 => RsaMechanism::Auto,
                1 => RsaMechanism::Sha256RsaPkcs,
                2 => RsaMechanism::RsaPkcs,
                other => return Err(malformed(format!("RSA mechanism {other}"))),
            };
            let expected = f.opt_bytes("the expected public key", MAX_HOST_KEY_BYTES)?;
            let pin = PinBytes(Zeroizing::new(
                f.bytes("the PIN", MAX_HOST_PIN_BYTES)?.to_vec(),
            ));
            Setup::Key {
                name,
                module,
                token,
                key,
                sessions,
                rsa_mechanism,
                expected,
                pin,
            }
        }
        T_SETUP_MODULE => Setup::Module { module: f.path()? },
        other => {
            return Err(malformed(format!(
                "tag {other} where the setup was expected"
            )));
        }
    };
    let log_filter = f.text("the log filter")?;
    let log_format = match f.u8("the log format")? {
        0 => LogFormat::Text,
        1 => LogFormat::Json,
        other => return Err(malformed(format!("log format {other}"))),
    };
    f.end()?;
    Ok(SetupFrame {
        setup,
        log_filter,
        log_format,
    })
}

/// Reads a request: `Ok(None)` when the parent closed the pipe.
pub fn read_request(r: &mut impl Read) -> Result<Option<(u64, Request)>, FrameError> {
    let Some(body) = read_body(r)? else {
        return Ok(None);
    };
    let (tag, id, mut f) = header(&body);
    let req = match tag {
        T_CONNECT => Request::Connect,
        T_SIGN => {
            let wait_ms = f.u32("the session wait")?;
            let message = f
                .bytes("the message to sign", MAX_HOST_SIGN_MESSAGE_BYTES)?
                .to_vec();
            Request::Sign { message, wait_ms }
        }
        T_RECOVER => Request::Recover {
            wait_ms: f.u32("the recovery wait")?,
        },
        T_DISCONNECT => Request::Disconnect,
        T_INFO => Request::Info,
        T_LIST => {
            let n = f.count("the PINs")?;
            let mut pins = Vec::with_capacity(n);
            for _ in 0..n {
                let label = f.text("a token label")?;
                let pin = PinBytes(Zeroizing::new(
                    f.bytes("a PIN", MAX_HOST_PIN_BYTES)?.to_vec(),
                ));
                pins.push((label, pin));
            }
            Request::ListTokens { pins }
        }
        other => return Err(malformed(format!("request tag {other}"))),
    };
    f.end()?;
    Ok(Some((id, req)))
}

/// Reads a response: `Ok(None)` when the host closed the pipe.
pub fn read_response(r: &mut impl Read) -> Result<Option<(u64, Response)>, FrameError> {
    let Some(body) = read_body(r)? else {
        return Ok(None);
    };
    let (tag, id, mut f) = header(&body);
    let resp = match tag {
        T_HELLO => {
            if f.take(MAGIC.len(), "the greeting")? != MAGIC {
                return Err(malformed(
                    "not a vigil PKCS#11 host (the greeting is wrong)",
                ));
            }
            Response::Hello {
                version: f.u32("the protocol version")?,
            }
        }
        T_DONE => Response::Done,
        T_DESCRIBED => {
            let token_label = f.text("the token label")?;
            let slot = f.u64("the slot")?;
            let algorithm = match f.u8("the algorithm")? {
                0 => SignatureAlgorithm::EcdsaP256Sha256,
                1 => SignatureAlgorithm::EcdsaP384Sha384,
                2 => SignatureAlgorithm::RsaPkcs1Sha256,
                other => return Err(malformed(format!("algorithm {other}"))),
            };
            let name = f.text("the mechanism")?;
            let mechanism = MECHANISM_NAMES
                .iter()
                .find(|m| **m == name)
                .ok_or_else(|| malformed(format!("mechanism {name:?}")))?;
            let public_key = f.bytes("the public key", MAX_HOST_KEY_BYTES)?.to_vec();
            Response::Described(KeyDescription {
                token_label,
                slot,
                algorithm,
                mechanism,
                public_key,
            })
        }
        T_SIGNATURE => Response::Signature(f.bytes("the signature", MAX_HOST_KEY_BYTES)?.to_vec()),
        T_TEXT => Response::Text(f.text("the text")?),
        T_TOKENS => {
            let n = f.count("the tokens")?;
            let mut tokens = Vec::with_capacity(n);
            for _ in 0..n {
                let slot = f.u64("the slot")?;
                let label = f.text("the token label")?;
                let model = f.text("the model")?;
                let serial = f.text("the serial")?;
                let initialized = f.flag("initialized")?;
                let logged_in = f.flag("logged in")?;
                let login_error = f.opt_text("the login error")?;
                let error = f.opt_text("the error")?;
                let k = f.count("the keys")?;
                let mut keys = Vec::with_capacity(k);
                for _ in 0..k {
                    let class = if f.flag("the key class")? {
                        "public"
                    } else {
                        "private"
                    };
                    keys.push(ObjectListing {
                        class,
                        label: f.text("the key label")?,
                        id: f.text("the key id")?,
                        key_type: f.text("the key type")?,
                    });
                }
                tokens.push(TokenListing {
                    slot,
                    label,
                    model,
                    serial,
                    initialized,
                    logged_in,
                    login_error,
                    error,
                    keys,
                });
            }
            Response::Tokens(tokens)
        }
        T_ERROR => {
            let code = f.u8("the error kind")?;
            let e = if code == 4 {
                HsmError::Busy(usize::try_from(f.u64("the sessions")?).unwrap_or(usize::MAX))
            } else {
                let t = f.text("the error text")?;
                match code {
                    0 => HsmError::Pin(t),
                    1 => HsmError::Config(t),
                    2 => HsmError::Lost(t),
                    3 => HsmError::Failed(t),
                    other => return Err(malformed(format!("error kind {other}"))),
                }
            };
            Response::Error(e)
        }
        other => return Err(malformed(format!("response tag {other}"))),
    };
    f.end()?;
    Ok(Some((id, resp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn requests_and_responses_survive_the_pipe() {
        let mut pipe = Vec::new();
        write_request(
            &mut pipe,
            7,
            &Request::Sign {
                message: vec![1, 2, 3],
                wait_ms: 250,
            },
        )
        .expect("write");
        write_request(&mut pipe, 8, &Request::Recover { wait_ms: 9 }).expect("write");
        let mut r = pipe.as_slice();
        match read_request(&mut r).expect("read") {
            Some((7, Request::Sign { message, wait_ms })) => {
                assert_eq!((message.as_slice(), wait_ms), (&[1u8, 2, 3][..], 250));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_request(&mut r).expect("read"),
            Some((8, Request::Recover { wait_ms: 9 }))
        ));
        assert!(read_request(&mut r).expect("eof").is_none());

        let d = KeyDescription {
            token_label: "hsm1".into(),
            slot: 17,
            algorithm: SignatureAlgorithm::EcdsaP384Sha384,
            mechanism: "CKM_ECDSA",
            public_key: vec![4; 97],
        };
        let mut pipe = Vec::new();
        write_response(
            &mut pipe,
            0,
            &Response::Hello {
                version: PROTOCOL_VERSION,
            },
        )
        .expect("w");
        write_response(&mut pipe, 3, &Response::Described(d.clone())).expect("w");
        write_response(&mut pipe, 4, &Response::Error(HsmError::Busy(4))).expect("w");
        write_response(
            &mut pipe,
            5,
            &Response::Error(HsmError::Pin("CKR_PIN_INCORRECT".into())),
        )
        .expect("w");
        let mut r = pipe.as_slice();
        assert!(matches!(
            read_response(&mut r).expect("hello"),
            Some((
                0,
                Response::Hello {
                    version: PROTOCOL_VERSION
                }
            ))
        ));
        match read_response(&mut r).expect("described") {
            Some((3, Response::Described(got))) => {
                assert_eq!(
                    (
                        got.token_label,
                        got.slot,
                        got.algorithm,
                        got.mechanism,
                        got.public_key
                    ),
                    (
                        d.token_label,
                        d.slot,
                        d.algorithm,
                        d.mechanism,
                        d.public_key
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_response(&mut r).expect("busy"),
            Some((4, Response::Error(HsmError::Busy(4))))
        ));
        assert!(matches!(
            read_response(&mut r).expect("pin"),
            Some((5, Response::Error(HsmError::Pin(t)))) if t == "CKR_PIN_INCORRECT"
        ));
    }

    #[test]
    fn the_setup_carries_the_pin_and_the_key() {
        let s = SetupFrame {
            setup: Setup::Key {
                name: "hsm1".into(),
                module: "/usr/lib/p11-kit-client.so".into(),
                token: TokenSelector::Slot(3),
                key: KeySelector {
                    label: Some("ocsp".into()),
                    id: Some(vec![1]),
                },
                sessions: 4,
                rsa_mechanism: RsaMechanism::RsaPkcs,
                expected: None,
                pin: PinBytes(Zeroizing::new(b"1234".to_vec())),
            },
            log_filter: "info".into(),
            log_format: LogFormat::Json,
        };
        let mut pipe = Vec::new();
        write_setup(&mut pipe, &s).expect("write");
        let got = read_setup(&mut pipe.as_slice()).expect("read");
        assert!(!format!("{got:?}").contains("1234"), "{got:?}");
        match got.setup {
            Setup::Key {
                name,
                module,
                token,
                key,
                sessions,
                rsa_mechanism,
                expected,
                pin,
            } => {
                assert_eq!(name, "hsm1");
                assert_eq!(module, PathBuf::from("/usr/lib/p11-kit-client.so"));
                assert_eq!(token, TokenSelector::Slot(3));
                assert_eq!(key.label.as_deref(), Some("ocsp"));
                assert_eq!(key.id, Some(vec![1]));
                assert_eq!((sessions, rsa_mechanism), (4, RsaMechanism::RsaPkcs));
                assert!(expected.is_none());
                assert_eq!(&*pin, b"1234");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(got.log_format, LogFormat::Json);
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        // A length over the bound is refused before anything is read or allocated for it.
        let huge = ((MAX_HOST_FRAME_BYTES + 1) as u32).to_be_bytes();
        let e = read_response(&mut huge.as_slice()).expect_err("too long");
        assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
        let e = read_request(&mut u32::MAX.to_be_bytes().as_slice()).expect_err("too long");
        assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
        // A field over its bound inside a frame of an allowed size.
        let mut body = vec![T_SIGNATURE];
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&((MAX_HOST_KEY_BYTES + 1) as u32).to_be_bytes());
        let e = read_response(&mut frame(&body).as_slice()).expect_err("field");
        assert!(e.to_string().contains("the signature"), "{e}");
        // A frame shorter than its header, one that claims more than arrives, a field that
        // runs past the frame, trailing bytes, an unknown tag, a wrong greeting, bad UTF-8.
        let short = frame(&[T_DONE, 0, 0]);
        let mut cut = frame(&[T_DONE, 0, 0, 0, 0, 0, 0, 0, 1]);
        cut.truncate(8);
        let mut past = vec![T_TEXT, 0, 0, 0, 0, 0, 0, 0, 1];
        past.extend_from_slice(&10u32.to_be_bytes());
        past.extend_from_slice(b"abc");
        let trailing = frame(&[T_DONE, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
        let unknown = frame(&[0xee, 0, 0, 0, 0, 0, 0, 0, 1]);
        let mut hello = vec![T_HELLO, 0, 0, 0, 0, 0, 0, 0, 0];
        hello.extend_from_slice(b"notvigil");
        hello.extend_from_slice(&1u32.to_be_bytes());
        let mut utf8 = vec![T_TEXT, 0, 0, 0, 0, 0, 0, 0, 1];
        utf8.extend_from_slice(&2u32.to_be_bytes());
        utf8.extend_from_slice(&[0xc3, 0x28]);
        for bad in [
            short,
            cut,
            frame(&past),
            trailing,
            unknown,
            frame(&hello),
            frame(&utf8),
        ] {
            let e = read_response(&mut bad.as_slice()).expect_err("malformed");
            assert!(matches!(e, FrameError::Malformed(_)), "{e}");
        }
        // A request with a PIN longer than any token allows.
        let mut list = vec![T_LIST, 0, 0, 0, 0, 0, 0, 0, 1];
        list.extend_from_slice(&1u32.to_be_bytes());
        list.extend_from_slice(&1u32.to_be_bytes());
        list.push(b'x');
        list.extend_from_slice(&((MAX_HOST_PIN_BYTES + 1) as u32).to_be_bytes());
        let e = read_request(&mut frame(&list).as_slice()).expect_err("pin");
        assert!(
            matches!(e, FrameError::TooLong { what: "a PIN", .. }),
            "{e}"
        );
        // Writing a message over the bound fails before anything is written.
        let mut sink = Vec::new();
        let e = write_request(
            &mut sink,
            1,
            &Request::Sign {
                message: vec![0; MAX_HOST_FRAME_BYTES],
                wait_ms: 0,
            },
        )
        .expect_err("too long to write");
        assert!(matches!(e, FrameError::TooLong { .. }), "{e}");
        assert!(sink.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_reader() {
        // A cheap fuzz: every prefix and single-byte corruption of valid frames.
        let mut pipe = Vec::new();
        write_response(
            &mut pipe,
            1,
            &Response::Tokens(vec![TokenListing {
                slot: 1,
                label: "t".into(),
                model: "m".into(),
                serial: "s".into(),
                initialized: true,
                logged_in: false,
                login_error: Some("e".into()),
                error: None,
                keys: vec![ObjectListing {
                    class: "public",
                    label: "ocsp".into(),
                    id: "01".into(),
                    key_type: "EC".into(),
                }],
            }]),
        )
        .expect("write");
        for cut in 0..pipe.len() {
            let _ = read_response(&mut &pipe[..cut]);
            for flip in [0x00u8, 0x01, 0x80, 0xff] {
                let mut bad = pipe.clone();
                bad[cut] ^= flip;
                let _ = read_response(&mut bad.as_slice());
                let _ = read_request(&mut bad.as_slice());
                let _ = read_setup(&mut bad.as_slice());
            }
        }
        match read_response(&mut pipe.as_slice()).expect("whole") {
            Some((1, Response::Tokens(t))) => {
                assert_eq!(t[0].keys[0].class, "public");
                assert_eq!(t[0].login_error.as_deref(), Some("e"));
            }
            other => panic!("{other:?}"),
        }
    }
}
