//! The aggregator's download: `HEAD`, then the CRL in Range requests resumed with `If-Range`
//! after every interruption, over the small blocking HTTP/1.1 client [`fetch`].

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use super::{
    ConsumerError, MAX_ATTEMPTS, MAX_CRL_BYTES, MAX_HEAD_BYTES, RESUME_PROBE_BYTES, RETRY_BACKOFF,
    TIMEOUT, io_at,
};

/// A CRL downloaded in pieces.
#[derive(Debug, Clone)]
pub struct Download {
    /// The whole body.
    pub body: Vec<u8>,
    /// Its ETag.
    pub etag: Option<String>,
    /// Requests made.
    pub requests: u32,
    /// Requests that failed and were retried.
    pub retries: u32,
    /// Whether the server answered a Range request with 206.
    pub range_supported: bool,
}

/// Downloads `url` as an aggregator does: a `HEAD` for its length and ETag, the first half
/// with a Range request, then the rest with `Range: bytes=N-` and `If-Range: <ETag>`, resuming
/// after every interruption (a 200 instead of 206 means the CRL changed: the whole new one
/// arrived). At most [`MAX_ATTEMPTS`] failed requests, [`MAX_CRL_BYTES`] in all.
pub fn download(url: &str) -> Result<Download, ConsumerError> {
    let mut d = Download {
        body: Vec::new(),
        etag: None,
        requests: 0,
        retries: 0,
        range_supported: true,
    };
    let mut total: Option<u64> = None;
    let mut failures = 0u32;
    let mut last_error = ConsumerError::CutShort;
    // The first piece: half the CRL when HEAD tells its length, else RESUME_PROBE_BYTES.
    let mut probe = RESUME_PROBE_BYTES;
    loop {
        if failures >= MAX_ATTEMPTS {
            return Err(ConsumerError::GaveUp {
                failures,
                last: Box::new(last_error),
            });
        }
        if failures > 0 {
            std::thread::sleep(RETRY_BACKOFF * (1 << (failures - 1).min(6)));
        }
        d.requests += 1;
        match fetch(url, "HEAD", &[], 0) {
            Ok(f) if f.status == 200 => {
                if let Some(n) = f.length {
                    if n > MAX_CRL_BYTES {
                        return Err(ConsumerError::CrlTooLarge(n));
                    }
                    probe = (n / 2).max(1);
                }
                d.etag = f.etag;
                break;
            }
            Ok(f) if f.status >= 500 || f.status == 429 || f.status == 408 => {
                last_error = ConsumerError::Head(Box::new(ConsumerError::Http(f.status)));
            }
            // HEAD not allowed, or not found: the GETs tell (a GET of a missing CRL fails)
            Ok(_) => break,
            Err(e) => last_error = ConsumerError::Head(Box::new(e)),
        }
        failures += 1;
        d.retries += 1;
    }
    loop {
        if total.is_some_and(|n| d.body.len() as u64 == n) {
            return Ok(d);
        }
        if failures >= MAX_ATTEMPTS {
            return Err(ConsumerError::GaveUp {
                failures,
                last: Box::new(last_error),
            });
        }
        if failures > 0 {
            std::thread::sleep(RETRY_BACKOFF * (1 << (failures - 1).min(6)));
        }
        if d.etag.is_none() && !d.body.is_empty() {
            // without an ETag, If-Range cannot keep two versions from being stitched
            // together: start over with the whole body
            d.body.clear();
            total = None;
            d.range_supported = false;
        }
        let have = d.body.len() as u64;
        let range = if have == 0 && d.range_supported {
            Some(format!("bytes=0-{}", probe - 1))
        } else if have > 0 {
            Some(format!("bytes={have}-"))
        } else {
            None
        };
        let mut headers = Vec::new();
        if let Some(r) = &range {
            headers.push(("Range", r.as_str()));
            if let Some(etag) = d.etag.as_deref() {
                headers.push(("If-Range", etag));
            }
        }
        d.requests += 1;
        let f = match fetch(url, "GET", &headers, MAX_CRL_BYTES) {
            Ok(f) => f,
            Err(e) => {
                failures += 1;
                d.retries += 1;
                last_error = e;
                continue;
            }
        };
        match f.status {
            206 => {
                let Some((first, len)) = f.content_range else {
                    return Err(ConsumerError::NoContentRange);
                };
                if first != have || total.is_some_and(|n| n != len) {
                    return Err(ConsumerError::WrongRange {
                        asked: have,
                        first,
                        len,
                    });
                }
                if len > MAX_CRL_BYTES {
                    return Err(ConsumerError::CrlTooLarge(len));
                }
                if d.etag.is_some() && f.etag != d.etag {
                    return Err(ConsumerError::EtagChanged);
                }
                total = Some(len);
                d.etag = f.etag;
                d.body.extend_from_slice(&f.body);
                if !f.complete {
                    failures += 1;
                    d.retries += 1;
                    last_error = ConsumerError::CutShortAt(d.body.len());
                }
            }
            200 => {
                // the server ignores Range, or If-Range failed: the CRL changed mid-download
                if range.is_some() && d.etag == f.etag {
                    d.range_supported = false;
                }
                d.body = f.body;
                d.etag = f.etag;
                total = Some(f.length.unwrap_or(d.body.len() as u64));
                if !f.complete {
                    failures += 1;
                    d.retries += 1;
                    last_error = ConsumerError::CutShortAt(d.body.len());
                }
            }
            416 => {
                // shorter than what was stitched: a new version; start over
                d.body.clear();
                d.etag = None;
                total = None;
                failures += 1;
                d.retries += 1;
                last_error = ConsumerError::RangeNotSatisfiable;
            }
            s if s >= 500 || s == 429 || s == 408 => {
                failures += 1;
                d.retries += 1;
                last_error = ConsumerError::Http(s);
            }
            s => return Err(ConsumerError::Http(s)),
        }
    }
}

/// One response, possibly cut short.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// `ETag`.
    pub etag: Option<String>,
    /// `Content-Length`.
    pub length: Option<u64>,
    /// `Content-Range: bytes first-last/len` as (first, len).
    pub content_range: Option<(u64, u64)>,
    /// What arrived of the body.
    pub body: Vec<u8>,
    /// The whole body arrived (Content-Length bytes, or until the connection closed without).
    pub complete: bool,
}

/// One GET over a fresh connection. A body that stops early (connection closed or timed out
/// after the head) is returned with `complete: false`; a body announced or grown past
/// `max_body` is an error.
pub fn fetch(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    max_body: u64,
) -> Result<Fetched, ConsumerError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ConsumerError::UnsupportedUrl(url.to_owned()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') && !host.ends_with(']') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(io_at(host))?
        .next()
        .ok_or_else(|| ConsumerError::NoAddress(host.to_owned()))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(io_at(host))?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io_at(host))?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io_at(host))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(io_at(host))?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(ConsumerError::HeadTooLarge(host.to_owned()));
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(ConsumerError::ClosedBeforeHead(host.to_owned())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io_at(host)(e)),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ConsumerError::BadStatusLine(host.to_owned()))?;
    let mut f = Fetched {
        status,
        etag: None,
        length: None,
        content_range: None,
        body: buf[end + 4..].to_vec(),
        complete: false,
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "etag" => f.etag = Some(v.to_owned()),
            "content-length" => f.length = v.parse().ok(),
            "content-range" => f.content_range = parse_content_range(v),
            "transfer-encoding" if !v.eq_ignore_ascii_case("identity") => {
                return Err(ConsumerError::TransferEncoding {
                    host: host.to_owned(),
                    coding: v.to_owned(),
                });
            }
            _ => {}
        }
    }
    if method == "HEAD" || status == 304 || status == 204 || (100..200).contains(&status) {
        f.body.clear();
        f.complete = true;
        return Ok(f);
    }
    let want = f.length.unwrap_or(max_body + 1);
    if f.length.is_some_and(|n| n > max_body) {
        return Err(ConsumerError::BodyTooLarge {
            host: host.to_owned(),
            bytes: want,
            max: max_body,
        });
    }
    while (f.body.len() as u64) < want {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => f.body.extend_from_slice(&chunk[..n]),
            Err(_) => break, // cut short: the caller resumes
        }
        if f.body.len() as u64 > max_body {
            return Err(ConsumerError::BodyGrewTooLarge {
                host: host.to_owned(),
                max: max_body,
            });
        }
    }
    match f.length {
        Some(n) => {
            f.body.truncate(n as usize);
            f.complete = f.body.len() as u64 == n;
        }
        None => f.complete = true,
    }
    Ok(f)
}

/// `bytes first-last/len` → (first, len).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, len) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, len): (u64, u64, u64) =
        (first.parse().ok()?, last.parse().ok()?, len.parse().ok()?);
    (first <= last && last < len).then_some((first, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 100)));
        assert_eq!(parse_content_range("bytes 90-99/100"), Some((90, 100)));
        assert_eq!(parse_content_range("bytes 90-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
