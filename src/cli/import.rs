//! `vigil import`: an OpenSSL `ca` index or PEM files, streamed in acknowledged batches.

use super::*;

/// OpenSSL `ca` database: tab-separated status (V, R, E), expiry, revocation
/// (`date[,reason[,...]]`), serial (hex), file name, subject. Dates are `YYMMDDHHMMSSZ` or
/// `YYYYMMDDHHMMSSZ`.
///
/// Streamed, in two passes over the file: the first checks every line (a bad line anywhere
/// writes nothing), the second writes batches of [`IMPORT_BATCH_CERTIFICATES`] certificates,
/// [`IMPORT_BATCHES_IN_FLIGHT`] at once, each acknowledged like a revocation (quorum, or the
/// synced journal). Memory is bounded by the batches in flight, not the file. A batch that
/// fails stops the import: the report says how many certificates were acknowledged before it,
/// and running it again is safe (the merge is idempotent).
pub(super) fn import(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    path: &Path,
    issuer: &str,
) -> Result<(), String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    use vigil::limits::{IMPORT_BATCH_CERTIFICATES, IMPORT_BATCHES_IN_FLIGHT};
    let id = issuer_id(cfg, clock, issuer)?;
    let allow_hold = cfg.allows_holds(issuer);
    let parse = IndexParser {
        cfg,
        clock,
        id,
        issuer,
        allow_hold,
        path,
    };
    let (issued, revoked) = parse.check()?;
    let writer = vigil::writer::StatusWriter::from_config(cfg).map_err(|e| e.to_string())?;
    let rt = small_runtime()?;
    let mut lines = parse.lines()?;
    let mut summary = String::new();
    let acknowledged = rt.block_on(async {
        let mut in_flight = FuturesUnordered::new();
        let mut acknowledged = 0usize;
        let mut done = false;
        loop {
            while !done && in_flight.len() < IMPORT_BATCHES_IN_FLIGHT {
                let mut batch = Vec::with_capacity(IMPORT_BATCH_CERTIFICATES * 2);
                let mut certificates = 0;
                while certificates < IMPORT_BATCH_CERTIFICATES {
                    match lines.next_certificate(&mut batch)? {
                        true => certificates += 1,
                        false => {
                            done = true;
                            break;
                        }
                    }
                }
                if certificates == 0 {
                    break;
                }
                let w = &writer;
                in_flight.push(async move { (certificates, w.write(batch).await) });
            }
            let Some((n, result)) = in_flight.next().await else {
                break;
            };
            match result {
                Ok(w) => {
                    acknowledged += n;
                    summary = w.summary;
                }
                Err(e) => return Err(import_stopped(acknowledged, issued, &e)),
            }
        }
        Ok::<_, String>(acknowledged)
    })?;
    println!(
        "imported {acknowledged} certificate(s), {revoked} revoked, for {issuer}; acknowledged by {summary}"
    );
    Ok(())
}

/// `vigil import --pem`: records the issuance of every certificate in the PEM files, each with
/// the CRL shard its cRLDistributionPoints names. Every file is read and every certificate
/// checked first: a file that does not read, a certificate that does not parse, or one whose
/// cRLDistributionPoints names no CRL of the issuer refuses the whole import, writing nothing.
/// Then batches of [`IMPORT_BATCH_CERTIFICATES`](vigil::limits::IMPORT_BATCH_CERTIFICATES) are
/// written in turn, each acknowledged like a revocation; running it again is safe.
pub(super) fn import_pem(
    cfg: &Config,
    clock: &vigil::clock::Clock,
    files: &[PathBuf],
    issuer: &str,
) -> Result<(), String> {
    use vigil::limits::{IMPORT_BATCH_CERTIFICATES, MAX_IMPORT_PEM_BYTES};
    let id = issuer_id(cfg, clock, issuer)?;
    let urls = vigil::writer::CrlUrls::from_config(cfg);
    let mut events = Vec::new();
    let mut certificates = 0usize;
    let mut on_shard = 0usize;
    for path in files {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len();
        if len > MAX_IMPORT_PEM_BYTES {
            return Err(format!(
                "{}: {len} bytes, more than the {MAX_IMPORT_PEM_BYTES} a PEM file may have; split it",
                path.display()
            ));
        }
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let certs = Certificate::load_pem_chain(&text)
            .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: holds no certificate", path.display()));
        }
        for (i, cert) in certs.iter().enumerate() {
            let at = || format!("{} (certificate {})", path.display(), i + 1);
            let (serial, not_after) =
                vigil::pki::serial_and_not_after(cert).map_err(|e| format!("{}: {e}", at()))?;
            let scope = urls.scope_of(issuer, cert).map_err(|e| {
                format!(
                    "refusing the import: {}, serial {serial}: {e}; nothing was written",
                    at()
                )
            })?;
            on_shard += usize::from(scope.is_some());
            let mut one = Vec::with_capacity(2);
            for kind in vigil::writer::issuance_kinds(not_after, scope) {
                one.push(event(cfg, clock, id, serial, kind));
            }
            events.push(one);
            certificates += 1;
        }
    }
    app::prepare_embedded(cfg, clock).map_err(|e| e.to_string())?;
    let writer = vigil::writer::StatusWriter::from_config(cfg).map_err(|e| e.to_string())?;
    let rt = small_runtime()?;
    let mut acknowledged = 0usize;
    let mut summary = String::new();
    for batch in events.chunks(IMPORT_BATCH_CERTIFICATES) {
        let n = batch.len();
        let flat: Vec<Event> = batch.iter().flatten().cloned().collect();
        match rt.block_on(writer.write(flat)) {
            Ok(w) => {
                acknowledged += n;
                summary = w.summary;
            }
            Err(e) => {
                return Err(import_stopped(acknowledged, certificates, &e));
            }
        }
    }
    println!(
        "imported {acknowledged} certificate(s) for {issuer}, {on_shard} with the CRL shard their cRLDistributionPoints names; acknowledged by {summary}"
    );
    Ok(())
}

/// Reads an OpenSSL index line by line into events.
pub(super) struct IndexParser<'a> {
    cfg: &'a Config,
    clock: &'a vigil::clock::Clock,
    id: IssuerId,
    issuer: &'a str,
    allow_hold: bool,
    path: &'a Path,
}

/// The lines of an index being read, for [`IndexParser::lines`].
pub(super) struct IndexLines<'a> {
    parser: &'a IndexParser<'a>,
    reader: std::io::BufReader<std::fs::File>,
    line: String,
    n: usize,
}

impl IndexParser<'_> {
    fn open(&self) -> Result<std::io::BufReader<std::fs::File>, String> {
        std::fs::File::open(self.path)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| format!("reading {}: {e}", self.path.display()))
    }

    fn lines(&self) -> Result<IndexLines<'_>, String> {
        Ok(IndexLines {
            parser: self,
            reader: self.open()?,
            line: String::new(),
            n: 0,
        })
    }

    /// Checks every line; returns (certificates, revoked or held).
    fn check(&self) -> Result<(usize, usize), String> {
        let mut lines = self.lines()?;
        let (mut issued, mut revoked) = (0, 0);
        let mut events = Vec::with_capacity(2);
        loop {
            events.clear();
            if !lines.next_certificate(&mut events)? {
                return Ok((issued, revoked));
            }
            issued += 1;
            revoked += usize::from(events.len() > 1);
        }
    }

    /// The events of one line: the issuance, and the revocation or hold if any.
    fn parse(&self, n: usize, line: &str, out: &mut Vec<Event>) -> Result<(), String> {
        let at = |msg: String| format!("{}:{}: {msg}", self.path.display(), n);
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 {
            return Err(at("expected at least 4 tab-separated fields".into()));
        }
        let serial = Serial::from_hex(f[3]).map_err(|e| at(format!("serial {:?}: {e}", f[3])))?;
        let not_after = asn1_time(f[1]).map_err(at)?;
        out.push(event(
            self.cfg,
            self.clock,
            self.id,
            serial,
            EventKind::Issued { not_after },
        ));
        if f[0] == "R" {
            let mut parts = f[2].split(',');
            let time = asn1_time(parts.next().unwrap_or_default()).map_err(at)?;
            let kind = match parts.next() {
                None | Some("") => EventKind::Revoked {
                    time,
                    reason: RevocationReason::Unspecified,
                },
                // OpenSSL records a hold as a revocation with reason certificateHold.
                Some(r) if r.eq_ignore_ascii_case("certificateHold") => {
                    if !self.allow_hold {
                        return Err(at(format!(
                            "certificateHold, but issuer {:?} does not allow holds (allow_hold)",
                            self.issuer
                        )));
                    }
                    EventKind::Hold { time }
                }
                Some(r) => EventKind::Revoked {
                    time,
                    reason: RevocationReason::parse(r).map_err(|e| at(e.to_string()))?,
                },
            };
            out.push(event(self.cfg, self.clock, self.id, serial, kind));
        }
        Ok(())
    }
}

impl IndexLines<'_> {
    /// Appends the next certificate's events to `out`; false at the end of the file.
    fn next_certificate(&mut self, out: &mut Vec<Event>) -> Result<bool, String> {
        use std::io::{BufRead, Read};
        use vigil::limits::MAX_INDEX_LINE_BYTES;
        loop {
            self.line.clear();
            self.n += 1;
            let read = (&mut self.reader)
                .take(MAX_INDEX_LINE_BYTES as u64 + 1)
                .read_line(&mut self.line)
                .map_err(|e| format!("{}:{}: {e}", self.parser.path.display(), self.n))?;
            if read == 0 {
                return Ok(false);
            }
            if self.line.len() > MAX_INDEX_LINE_BYTES {
                return Err(format!(
                    "{}:{}: line longer than {MAX_INDEX_LINE_BYTES} bytes",
                    self.parser.path.display(),
                    self.n
                ));
            }
            let line = self.line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            self.parser.parse(self.n, line, out)?;
            return Ok(true);
        }
    }
}

pub(super) fn asn1_time(s: &str) -> Result<i64, String> {
    let t = if s.len() == 13 {
        der::asn1::UtcTime::from_der(&der_wrap(0x17, s)).map(|t| t.to_unix_duration())
    } else {
        der::asn1::GeneralizedTime::from_der(&der_wrap(0x18, s)).map(|t| t.to_unix_duration())
    };
    t.map(|d| d.as_secs() as i64)
        .map_err(|e| format!("bad time {s:?}: {e}"))
}

pub(super) fn der_wrap(tag: u8, s: &str) -> Vec<u8> {
    let mut v = vec![tag, s.len().min(127) as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// Why an import stopped, and what was acknowledged before it.
fn import_stopped(acknowledged: usize, total: usize, e: &dyn std::fmt::Display) -> String {
    format!(
        "import stopped: {acknowledged} of {total} certificate(s) acknowledged before a batch failed ({e}); running it again is safe"
    )
}
