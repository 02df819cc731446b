//! The CRLs this replica serves: held in memory with their HTTP headers, and the last good copy
//! of each kept on local disk under `<data_dir>/crl/<path>` so a restarted replica serves
//! while every Redis is down. With no Redis configured, that directory is also the store the
//! publisher writes to.
//!
//! A CRL is installed only if it verifies (the lint of [`crate::crl::lint`] with the slot's
//! expectations) and its number is above the one held: a replica never serves an older CRL
//! than one it served before. Disk writes are atomic (temporary file, fsync, rename) and
//! compare numbers under an exclusive lock on `<data_dir>/crl/.lock`, so a one-shot
//! `vigil crl publish` and a running server cannot put an older CRL over a newer one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderValue;

use crate::cache::http_date;
use crate::crl::lint::{self, Kind};
use crate::crl::{CrlId, CrlInfo, CrlIssuer, Expect, LintError, Sharding};
use crate::telemetry;

/// A CRL as served.
#[derive(Debug)]
pub struct ServedCrl {
    /// Which CRL.
    pub id: CrlId,
    /// The DER.
    pub der: Bytes,
    /// CRLNumber.
    pub number: u64,
    /// thisUpdate.
    pub this_update: i64,
    /// nextUpdate.
    pub next_update: i64,
    /// BaseCRLNumber of a delta CRL.
    pub delta_base: Option<u64>,
    /// `ETag`: the number and a hash of the bytes.
    pub etag: HeaderValue,
    /// `Last-Modified`: thisUpdate.
    pub last_modified: HeaderValue,
    /// `Expires` for the planned next publication, formatted once (the interval is fixed for
    /// the process, so so is the time).
    expires: std::sync::OnceLock<(i64, HeaderValue)>,
}

impl ServedCrl {
    /// Wraps a verified CRL.
    pub fn new(id: CrlId, der: Bytes, info: &CrlInfo) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        let etag = format!(
            "\"{}-{}\"",
            info.number,
            crate::status::hex(&digest.as_ref()[..8])
        );
        ServedCrl {
            id,
            der,
            number: info.number,
            this_update: info.this_update,
            next_update: info.next_update,
            delta_base: info.delta_base,
            etag: header(&etag),
            last_modified: header(&http_date(info.this_update)),
            expires: std::sync::OnceLock::new(),
        }
    }

    /// The `Expires` value for time `t` (the planned next publication), formatted on first use.
    pub fn expires_at(&self, t: i64) -> HeaderValue {
        let (at, v) = self.expires.get_or_init(|| (t, header(&http_date(t))));
        if *at == t {
            v.clone()
        } else {
            header(&http_date(t))
        }
    }
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

struct Slot {
    id: CrlId,
    issuer: usize,
    /// The IDP URI the CRL must carry (sharded scopes).
    idp_uri: Option<String>,
    current: RwLock<Option<Arc<ServedCrl>>>,
    /// (mtime, length) of the disk copy last read or written, to notice other writers.
    disk_stamp: Mutex<Option<(SystemTime, u64)>>,
}

/// One issuer's CRLs as the catalog lays them out: its sharding, deltas and base URL
/// ([`crate::config::Config::crl_of`]).
#[derive(Debug, Clone)]
pub struct IssuerCrls {
    /// What the CRLs say about their issuer.
    pub issuer: CrlIssuer,
    /// Its shards.
    pub sharding: Sharding,
    /// Delta CRLs too.
    pub deltas: bool,
    /// Public base URL (required for sharded or delta CRLs; the config checks it).
    pub base_url: Option<String>,
    /// A CRL larger than this is logged and counted when installed (0: never).
    pub warn_bytes: u64,
    /// Complete CRLs are republished this often, seconds (for `Expires`).
    pub interval: i64,
}

impl IssuerCrls {
    /// An issuer with one unsharded CRL, no deltas, no base URL and the default size warning.
    pub fn unsharded(issuer: CrlIssuer) -> Self {
        IssuerCrls {
            issuer,
            sharding: Sharding::unsharded(),
            deltas: false,
            base_url: None,
            warn_bytes: crate::limits::CRL_WARN_BYTES,
            interval: 3600,
        }
    }
}

/// Every CRL path this deployment serves, and what each holds now.
pub struct Catalog {
    issuers: Vec<IssuerCrls>,
    slots: HashMap<String, Slot>,
    order: Vec<String>,
    dir: PathBuf,
    /// `<issuer>.json`: CCADB's "JSON Array of Partitioned CRLs", the URL of every complete CRL
    /// of the issuer (only with a base URL: CCADB needs absolute URLs).
    disclosures: HashMap<String, Bytes>,
}

/// What [`Catalog::install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// It is now served.
    Newer,
    /// The catalog already held this number or a higher one.
    NotNewer,
}

impl Catalog {
    /// Slots for every CRL of every issuer, under `dir`.
    pub fn new(issuers: Vec<IssuerCrls>, dir: PathBuf) -> Self {
        let mut slots = HashMap::new();
        let mut order = Vec::new();
        let mut disclosures = HashMap::new();
        for (i, ic) in issuers.iter().enumerate() {
            let name = &ic.issuer.name;
            for id in CrlId::all(name, &ic.sharding, ic.deltas) {
                let idp_uri = match (ic.sharding.is_sharded(), &ic.base_url) {
                    (true, Some(b)) => Some(id.full().url(b)),
                    _ => None,
                };
                let path = id.path();
                order.push(path.clone());
                slots.insert(
                    path,
                    Slot {
                        id,
                        issuer: i,
                        idp_uri,
                        current: RwLock::new(None),
                        disk_stamp: Mutex::new(None),
                    },
                );
            }
            if let Some(b) = &ic.base_url {
                let urls = shard_urls(name, &ic.sharding, b);
                let json = serde_json::to_vec(&urls).unwrap_or_default();
                disclosures.insert(format!("{name}.json"), Bytes::from(json));
            }
        }
        Catalog {
            issuers,
            slots,
            order,
            dir,
            disclosures,
        }
    }

    /// The republishing interval of `id`'s issuer, seconds (the next planned publication is
    /// thisUpdate plus this).
    pub fn interval(&self, id: &CrlId) -> i64 {
        self.slots
            .get(&id.path())
            .and_then(|s| self.issuers.get(s.issuer))
            .map_or(3600, |i| i.interval)
    }

    /// The JSON array of an issuer's CRL URLs at `path` (`<issuer>.json` under `/crl/`).
    pub fn disclosure(&self, path: &str) -> Option<Bytes> {
        self.disclosures.get(path).cloned()
    }

    /// The CRL at `path` (under `/crl/`): `None` when no such CRL exists, `Some(None)` when it
    /// exists but nothing has been published yet.
    pub fn lookup(&self, path: &str) -> Option<Option<Arc<ServedCrl>>> {
        self.slots.get(path).map(|s| s.read())
    }

    /// What is served for `id` now.
    pub fn current(&self, id: &CrlId) -> Option<Arc<ServedCrl>> {
        self.slots.get(&id.path()).and_then(Slot::read)
    }

    /// Every CRL id, complete CRLs of each issuer first.
    pub fn ids(&self) -> Vec<CrlId> {
        self.order
            .iter()
            .filter_map(|p| self.slots.get(p).map(|s| s.id.clone()))
            .collect()
    }

    /// The issuer of `id`.
    pub fn issuer(&self, id: &CrlId) -> Option<&CrlIssuer> {
        self.slots
            .get(&id.path())
            .and_then(|s| self.issuers.get(s.issuer))
            .map(|i| &i.issuer)
    }

    /// The IDP URI CRLs of `id` carry.
    pub fn idp_uri(&self, id: &CrlId) -> Option<&str> {
        self.slots
            .get(&id.path())
            .and_then(|s| s.idp_uri.as_deref())
    }

    /// The directory of disk copies.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks a CRL fetched for `id` (signature, issuer, kind, IDP, and the number when
    /// `number` is given). No clock check: a replica's clock does not judge the publisher's.
    pub fn verify(
        &self,
        id: &CrlId,
        der: &[u8],
        number: Option<u64>,
    ) -> Result<CrlInfo, LintError> {
        let slot = self
            .slots
            .get(&id.path())
            .ok_or_else(|| LintError(format!("{} is not a configured CRL", id.path())))?;
        let issuer = &self
            .issuers
            .get(slot.issuer)
            .ok_or_else(|| LintError(format!("{}: no issuer", id.path())))?
            .issuer;
        lint::lint(
            der,
            issuer,
            &Expect {
                kind: if id.delta {
                    Kind::Delta(None)
                } else {
                    Kind::Full
                },
                number,
                previous: None,
                idp_uri: slot.idp_uri.as_deref(),
                now: None,
            },
        )
    }

    /// Serves `crl` if it is newer than what `id` holds, and (with `persist`) writes it to the
    /// disk copy. Blocking (disk IO).
    pub fn install(&self, crl: ServedCrl, persist: bool) -> io::Result<Installed> {
        let Some(slot) = self.slots.get(&crl.id.path()) else {
            return Ok(Installed::NotNewer);
        };
        let crl = Arc::new(crl);
        {
            let mut cur = slot.current.write().unwrap_or_else(PoisonError::into_inner);
            if cur.as_ref().is_some_and(|c| c.number >= crl.number) {
                return Ok(Installed::NotNewer);
            }
            *cur = Some(crl.clone());
        }
        let labels = [("issuer", crl.id.issuer.clone()), ("crl", crl.id.path())];
        metrics::gauge!(telemetry::CRL_NUMBER, &labels).set(crl.number as f64);
        metrics::gauge!(telemetry::CRL_BYTES, &labels).set(crl.der.len() as f64);
        tracing::info!(crl = %crl.id.path(), number = crl.number, "serving CRL");
        let (warn_bytes, shards) = self
            .issuers
            .get(slot.issuer)
            .map_or((0, 1), |i| (i.warn_bytes, i.sharding.shards.max(1)));
        if let Some(fit) = shards_to_fit(crl.der.len() as u64, warn_bytes, shards) {
            metrics::counter!(telemetry::CRL_OVERSIZE, &labels).increment(1);
            tracing::warn!(
                crl = %crl.id.path(),
                bytes = crl.der.len(),
                warn_bytes,
                shards,
                shards_that_would_fit = fit,
                "CRL is larger than crl.warn_bytes (root programs ask for at most 10 MB); raise the shard count"
            );
        }
        if persist {
            self.persist(slot, &crl)?;
        }
        Ok(Installed::Newer)
    }

    /// Writes the disk copy unless the file already holds this number or a newer one.
    fn persist(&self, slot: &Slot, crl: &ServedCrl) -> io::Result<()> {
        let path = self.dir.join(crl.id.path());
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let lock = File::create(self.dir.join(".lock"))?;
        lock.lock()?;
        if let Ok(existing) = fs::read(&path)
            && lint::number_of(&existing).is_ok_and(|n| n >= crl.number)
        {
            return Ok(());
        }
        let tmp = path.with_extension("crl.tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&crl.der)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        if let Some(parent) = path.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
        *slot
            .disk_stamp
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stamp(&path);
        Ok(())
    }

    /// Reads disk copies that changed since last looked at (at start, and with no Redis to
    /// notice another process's publish), installing those that verify and are newer.
    /// Blocking. Returns the number of CRLs installed.
    pub fn load_disk(&self) -> usize {
        let mut installed = 0;
        for path in &self.order {
            let Some(slot) = self.slots.get(path) else {
                continue;
            };
            let file = self.dir.join(path);
            let now_stamp = stamp(&file);
            {
                let mut last = slot
                    .disk_stamp
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if now_stamp.is_none() || *last == now_stamp {
                    continue;
                }
                *last = now_stamp;
            }
            let der = match fs::read(&file) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "reading a CRL copy");
                    continue;
                }
            };
            match self.verify(&slot.id, &der, None) {
                Ok(info) => {
                    let crl = ServedCrl::new(slot.id.clone(), Bytes::from(der), &info);
                    if let Ok(Installed::Newer) = self.install(crl, false) {
                        installed += 1;
                    }
                }
                Err(e) => {
                    metrics::counter!(telemetry::CRL_REFRESH_ERRORS, "source" => "disk")
                        .increment(1);
                    tracing::warn!(file = %file.display(), error = %e, "a CRL copy on disk does not verify; ignored");
                }
            }
        }
        installed
    }

    /// Sets the age gauges.
    pub fn update_age_gauges(&self, now: i64) {
        for slot in self.slots.values() {
            if let Some(c) = slot.read() {
                let labels = [("issuer", c.id.issuer.clone()), ("crl", c.id.path())];
                metrics::gauge!(telemetry::CRL_AGE, &labels).set((now - c.this_update) as f64);
            }
        }
    }
}

/// The URL of every complete CRL of `issuer` under `base_url`, shard order: what CCADB's
/// "JSON Array of Partitioned CRLs" lists (one URL when unsharded).
pub fn shard_urls(issuer: &str, sharding: &Sharding, base_url: &str) -> Vec<String> {
    CrlId::all(issuer, sharding, false)
        .iter()
        .map(|id| id.url(base_url))
        .collect()
}

/// For a CRL of `bytes` cut into `shards` shards, the shard count at which a shard of the same
/// issuer would be about `warn_bytes` or less (assuming the entries spread evenly): `None` when
/// this one is within the bound.
pub fn shards_to_fit(bytes: u64, warn_bytes: u64, shards: u16) -> Option<u64> {
    if warn_bytes == 0 || bytes <= warn_bytes {
        return None;
    }
    Some(u64::from(shards.max(1)) * bytes.div_ceil(warn_bytes))
}

impl Slot {
    fn read(&self) -> Option<Arc<ServedCrl>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crl::testutil::serial;
    use crate::crl::{CrlSpec, Entry};
    use crate::status::RevocationReason;
    use crate::testkit::{ca, signed_crl as build};

    fn crl(issuer: &CrlIssuer, signer: &dyn crate::signer::Signer, number: u64) -> Vec<u8> {
        let spec = CrlSpec {
            number,
            this_update: 1_700_000_000,
            next_update: 1_700_086_400,
            idp_uri: None,
            delta_base: None,
            freshest_uri: None,
        };
        let mut e = [Entry {
            serial: serial(number),
            time: 1_600_000_000,
            reason: RevocationReason::Superseded,
        }];
        build(issuer, &spec, &mut e, signer).expect("build")
    }

    #[test]
    fn size_warning_advice_and_disclosure() {
        assert_eq!(shards_to_fit(10_000_000, 10_000_000, 1), None);
        assert_eq!(shards_to_fit(19_000_000, 10_000_000, 1), Some(2));
        assert_eq!(shards_to_fit(25_000_000, 10_000_000, 4), Some(12));
        let s = Sharding {
            shards: 3,
            by: crate::crl::ShardBy::Serial,
        };
        assert_eq!(
            shard_urls("ca", &s, "http://c.test/"),
            [
                "http://c.test/crl/ca/0.crl",
                "http://c.test/crl/ca/1.crl",
                "http://c.test/crl/ca/2.crl"
            ]
        );
        assert_eq!(
            shard_urls("ca", &Sharding::unsharded(), "http://c.test"),
            ["http://c.test/crl/ca.crl"]
        );
    }

    #[test]
    fn newer_only_persisted_and_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, signer) = ca();
        let issuer = CrlIssuer::from_certificate("t", &cert).expect("issuer");
        let make = || {
            Catalog::new(
                vec![IssuerCrls::unsharded(issuer.clone())],
                dir.path().join("crl"),
            )
        };
        let cat = make();
        let id = CrlId {
            issuer: "t".into(),
            shard: None,
            delta: false,
        };
        assert!(matches!(cat.lookup("t.crl"), Some(None)));
        assert!(cat.lookup("t/0.crl").is_none());
        let offer = |c: &Catalog, n: u64| {
            let der = crl(&issuer, &signer, n);
            let info = c.verify(&id, &der, Some(n)).expect("verifies");
            c.install(ServedCrl::new(id.clone(), Bytes::from(der), &info), true)
                .expect("install")
        };
        assert_eq!(offer(&cat, 10), Installed::Newer);
        assert_eq!(offer(&cat, 5), Installed::NotNewer);
        assert_eq!(offer(&cat, 10), Installed::NotNewer);
        assert_eq!(cat.current(&id).map(|c| c.number), Some(10));

        // a second process with an older CRL cannot put it over the newer disk copy
        let other = make();
        assert_eq!(offer(&other, 7), Installed::Newer);
        let restarted = make();
        assert_eq!(restarted.load_disk(), 1);
        assert_eq!(restarted.current(&id).map(|c| c.number), Some(10));

        // a copy that does not verify (another CA's) is ignored
        let (other_cert, other_signer) = ca();
        let mut forged = CrlIssuer::from_certificate("t", &other_cert).expect("issuer");
        forged.subject_der = issuer.subject_der.clone();
        fs::write(
            dir.path().join("crl/t.crl"),
            crl(&forged, &other_signer, 99),
        )
        .expect("write");
        assert!(
            cat.verify(&id, &crl(&forged, &other_signer, 99), None)
                .is_err()
        );
        let fresh = make();
        assert_eq!(fresh.load_disk(), 0);
        assert!(fresh.current(&id).is_none());
    }
}
