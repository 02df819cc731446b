//! Encrypted backups (age X25519): the writer's sink, and opening a backup for reading,
//! decrypted with an identity file when it is encrypted.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use super::BackupError;
use super::error::io_at;

/// What an age-encrypted file starts with.
const AGE_MAGIC: &[u8] = b"age-encryption.org/";

pub(super) fn parse_recipient(s: &str) -> Result<age::x25519::Recipient, BackupError> {
    s.trim().parse().map_err(|why| BackupError::Recipient {
        text: s.to_owned(),
        why,
    })
}

/// Where a backup is written: the file, or age's encryptor in front of it.
pub(super) enum Sink<'a> {
    Plain(BufWriter<&'a File>),
    Age(age::stream::StreamWriter<BufWriter<&'a File>>),
}

impl<'a> Sink<'a> {
    pub(super) fn new(
        file: &'a File,
        recipient: Option<&age::x25519::Recipient>,
    ) -> Result<Self, BackupError> {
        let out = BufWriter::with_capacity(1 << 20, file);
        let Some(r) = recipient else {
            return Ok(Sink::Plain(out));
        };
        let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient))?;
        Ok(Sink::Age(enc.wrap_output(out).map_err(|e| {
            BackupError::Encrypt(age::EncryptError::Io(e))
        })?))
    }

    /// Ends the stream (age's last chunk) and flushes.
    pub(super) fn close(self) -> std::io::Result<()> {
        use std::io::Write;
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Age(w) => w.finish()?.flush(),
        }
    }
}

impl std::io::Write for Sink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(b),
            Sink::Age(w) => w.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Age(w) => w.flush(),
        }
    }
}

/// Opens a backup for reading: as it is, or, when it is age-encrypted, decrypted with the
/// identities in `identity` (an age identity file, `AGE-SECRET-KEY-1…` lines). Refuses an
/// encrypted backup without an identity, or with one it was not encrypted to.
pub fn open(path: &Path, identity: Option<&Path>) -> Result<Box<dyn std::io::Read>, BackupError> {
    use std::io::{BufRead, Read};
    let io = io_at(path);
    let file = File::open(path).map_err(&io)?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let head = input.fill_buf().map_err(&io)?;
    if !head.starts_with(AGE_MAGIC) {
        return Ok(Box::new(input));
    }
    let Some(id_path) = identity else {
        return Err(BackupError::NeedIdentity(path.to_owned()));
    };
    let mut text = Vec::new();
    File::open(id_path)
        .map_err(io_at(id_path))?
        .take(crate::limits::MAX_KEY_FILE_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(io_at(id_path))?;
    if text.len() > crate::limits::MAX_KEY_FILE_BYTES {
        return Err(BackupError::IdentityTooLarge(id_path.to_owned()));
    }
    let identities = age::IdentityFile::from_buffer(&text[..])
        .and_then(|f| f.into_identities().map_err(std::io::Error::other))
        .map_err(|source| BackupError::NotIdentity {
            path: id_path.to_owned(),
            source,
        })?;
    let decryptor = age::Decryptor::new_buffered(input).map_err(|source| BackupError::NotAge {
        path: path.to_owned(),
        source,
    })?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => BackupError::WrongIdentity {
                backup: path.to_owned(),
                identity: id_path.to_owned(),
            },
            source => BackupError::Decrypt {
                path: path.to_owned(),
                source,
            },
        })?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}
