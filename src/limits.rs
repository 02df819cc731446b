//! Named bounds on every amount a client or a file controls.
//!
//! Each limit is a default for a config key (see `docs/CONFIG.md`); the comment says where the
//! number comes from. Anything decoded from the network or from disk is checked against one of
//! these before it is buffered or allocated.

/// Largest POST body accepted, in bytes (`limits.max_request_bytes`).
///
/// A request for [`MAX_CERT_IDS`] SHA-512 CertIDs with a 32-byte nonce and a small request
/// signature is under 8 KiB; twice that leaves room for a requestor certificate chain.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Longest request target (path and query) accepted for GET, in bytes (`limits.max_get_path_bytes`).
///
/// RFC 5019 §5 has clients switch to POST above 255 bytes of encoded request; real clients
/// still send longer GETs (nonces, SHA-512 CertIDs), so allow a generous multiple of that.
pub const MAX_GET_PATH_BYTES: usize = 4 * 1024;

/// Most CertIDs in one request (`limits.max_cert_ids`).
///
/// Browsers and TLS stacks send one; OpenSSL batches only when asked to. Each extra CertID costs
/// a view lookup, never an extra signature (one signature covers the whole response).
pub const MAX_CERT_IDS: usize = 32;

/// Longest nonce echoed, in octets (`limits.max_nonce_bytes`): RFC 9654 §2.1 allows nonces of
/// 1 ..= 128 octets, so by default every nonce it allows is echoed.
pub const MAX_NONCE_BYTES: usize = NONCE_OCTETS_ALLOWED;

/// RFC 9654 §2.1: the longest nonce a request may carry. A longer (or an empty) one is refused
/// with `malformedRequest`; this is also the most `limits.max_nonce_bytes` may be.
pub const NONCE_OCTETS_ALLOWED: usize = 128;

/// RFC 9654 §2.1: a responder that supports nonces must accept those of 16 ..= 32 octets, so
/// `limits.max_nonce_bytes` may not go below 32. Nonces between `limits.max_nonce_bytes` and
/// [`NONCE_OCTETS_ALLOWED`] are ignored (answered without a nonce), as §2.1 permits.
pub const NONCE_OCTETS_MUST_ACCEPT: usize = 32;

/// Size above which a CRL is warned about (`crl.warn_bytes`): Microsoft's root program asks
/// that CRLs stay at or under 10 MB, and CRL aggregators (CRLite, CRLSets) fetch every shard of
/// every CA several times a day.
pub const CRL_WARN_BYTES: u64 = 10_000_000;

/// Largest serial number content, in octets: RFC 5280 §4.1.2.2 allows 20, and a leading zero
/// octet keeps a 20-octet value with its high bit set positive.
pub const MAX_SERIAL_OCTETS: usize = 21;

/// Longest request kept as a front-cache key, in bytes (the key is the request as received, so
/// the client chooses it).
///
/// Only requests of exactly one CertID and nothing else are kept, and the largest of those that
/// can match an issuer (SHA-512 name and key hashes, a 21-octet serial, NULL parameters) is 185
/// bytes; anything longer cannot be such a request.
pub const MAX_FRONT_KEY_BYTES: usize = 256;

/// Memory for the front cache of resolved requests, bytes (`ocsp.front_cache_max_bytes`).
///
/// An entry weighs its key, its response and 256 bytes; with 1 to 2 KiB per response this is
/// some 30 000 to 60 000 requests, far more than the hot set of a CA's busiest certificates
/// (every request outside it still answers from the response cache, only decoded).
pub const FRONT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Largest encoded status event (one journal record), in bytes: an event holds a 32-byte issuer
/// id, a serial of at most 21 octets, two times, a reason and an origin name of at most 64 bytes.
pub const MAX_EVENT_BYTES: usize = 256;

/// Longest region / origin name carried in an event, in bytes.
pub const MAX_ORIGIN_BYTES: usize = 64;

/// Most connections served at once (`server.max_connections`): with the header-read timeout this
/// bounds memory held by idle or slow clients (about 64 KiB of buffers each at worst).
pub const MAX_CONNECTIONS: usize = 4096;

/// Signatures computed at once (`ocsp.signing_concurrency`); one per core keeps the software
/// signer busy without starving the reactor threads.
pub const SIGNING_CONCURRENCY: usize = 2;

/// Requests allowed to wait for a signature (`ocsp.signing_queue`); past it a request gets
/// `tryLater` at once instead of queueing without bound.
pub const SIGNING_QUEUE: usize = 256;

/// Signing sessions per HSM (`hsm.sessions`): enough to keep a network HSM's round trips
/// overlapped for [`SIGNING_CONCURRENCY`]-plus callers without holding many of the token's
/// session slots (tokens commonly allow a few hundred per client).
pub const HSM_SESSIONS: usize = 4;

/// Most signing sessions per HSM (`hsm.sessions`).
pub const MAX_HSM_SESSIONS: usize = 64;

/// Largest admin API request body, in bytes (`admin.max_body_bytes`): a revocation or issuance
/// in JSON is under 300 bytes; 4 KiB leaves room without letting a client make vigil buffer much.
pub const MAX_ADMIN_BODY_BYTES: usize = 4 * 1024;

/// Stream entries a replica's consumer reads per `XREAD` call. A reply of up to
/// this many × [`FEED_ENTRY_MAX_EVENTS`] events (about 120 bytes each) is parsed and decoded on
/// the tokio worker that read it, before a large read goes to the join thread: at 20 that is at
/// most 4,000 events, about 0.5 MB. At 200 (40,000 events, about 5 MB a reply) the cached-OCSP
/// p99 during a mass revocation of a million was 45–59 ms; at 20, 32–35 ms, in the same session
/// on the same machine (loadtest/README.md). Catching up costs one more loopback or LAN round
/// trip per 4,000 events.
pub const FEED_READ_COUNT: usize = 20;

/// Stream entries the archive role reads per `XREAD` call, and so at most the entries of one
/// archive block: the archive answers nothing, so it reads in larger replies (a few MiB at most)
/// and writes fewer, larger blocks.
pub const ARCHIVE_READ_COUNT: usize = 200;

/// Most events in one stream entry: a [`MERGE_MANY`](crate::feed::scripts::MERGE_MANY_LUA)
/// call appends the events of every certificate it changed as one entry (one `XADD` per batch
/// instead of one per event: half the script's time in a mass revocation), cut at this many.
/// The script holds the same number (`ENTRY_EVENTS`); a unit test checks they agree.
pub const FEED_ENTRY_MAX_EVENTS: usize = 200;

/// Threads for work that must not compete with answering ([`crate::background`]): CRL
/// builds, checks and verification, checkpoint writes. Two, so a checkpoint write does not wait
/// behind a CRL build of millions of entries.
pub const BACKGROUND_THREADS: usize = 2;

/// How much lower the background threads' scheduling priority is (added to the process's
/// niceness, at most 19).
pub const BACKGROUND_NICE: i32 = 10;

/// How much lower the priority of the thread joining large feed reads is
/// ([`crate::background::join`]). Less than [`BACKGROUND_NICE`]: a join holds a segment's
/// write lock for one record at a time, and a thread preempted while holding it makes that
/// segment's readers wait until it runs again.
pub const JOIN_NICE: i32 = 5;

/// The slowest transfer a CRL stored into or fetched from Redis is given time for, in bytes per
/// second: such a command's timeout is `crl.redis_timeout` plus the CRL's size at this rate
/// (a 36 MB CRL of a million entries: 2.25 s more). Loopback and a LAN move hundreds of MB/s.
pub const CRL_TRANSFER_FLOOR_BYTES_PER_SEC: u64 = 16 * 1024 * 1024;

/// Events of one feed read joined on the tokio worker that read them; a larger read (a mass
/// revocation, a catch-up: up to [`FEED_READ_COUNT`] × [`FEED_ENTRY_MAX_EVENTS`]) is joined on
/// the join thread ([`crate::background::join`]), so answers queued on that worker do not
/// wait for it.
pub const APPLY_INLINE_EVENTS: usize = 256;

/// Segments of one issuer's table in the status view, each under its own lock (by the serial's
/// last octet): an answer waits at most for one segment's writer, a scan holds one segment at a
/// time, and a resize rehashes one segment. A divisor of 256, so a checkpoint partition by
/// last octet lies in one segment.
pub const VIEW_SEGMENTS: usize = 64;
const _: () = assert!(256 % VIEW_SEGMENTS == 0);

/// Changes in one applied batch of events above which the batch counts as bulk (a mass
/// revocation, a catch-up): cached responses of the changed certificates are evicted as always,
/// but certificates with nothing cached are not remembered for status-change signing priority
/// (eight CertID forms each, in a bounded cache that a million would only churn). A replica
/// keeping up with a mass revocation reads a few entries of up to [`FEED_ENTRY_MAX_EVENTS`]
/// events at a time, so the bound sits below one entry's worth; revocations one by one stay
/// far below it.
pub const APPLY_BULK_CHANGES: usize = 64;

// One archive read is one archive block.
const _: () = assert!(ARCHIVE_READ_COUNT * FEED_ENTRY_MAX_EVENTS <= MAX_ARCHIVE_BLOCK_ENTRIES);
const _: () =
    assert!(MAX_ARCHIVE_BLOCK_ENTRIES * (MAX_EVENT_BYTES + 18) <= MAX_ARCHIVE_BLOCK_BYTES);

/// Snapshot fields read per `HSCAN` call during a bootstrap (a hint to Redis, not a hard cap).
pub const FEED_SCAN_COUNT: usize = 1000;

/// Work sent to one region's Redis in one pipeline, each pipeline within `feed.write_timeout`:
/// certificates per pipeline of [`MERGE_MANY`](crate::feed::scripts::MERGE_MANY_LUA) calls
/// (publish, import, repair, restore), events per hint call, hint entries read per `XRANGE`
/// in a hand-over. Bounds the request and reply buffered at once and the time Redis spends on
/// one pipeline: 500 certificates take Redis about 5 ms (`loadtest/README.md`).
pub const FEED_PIPELINE_CHUNK: usize = 500;

/// Certificates per [`MERGE_MANY`](crate::feed::scripts::MERGE_MANY_LUA) call: a call pays
/// the script's fixed cost (`EVALSHA` dispatch, the issuers-set `SADD`, the digest's read and
/// write) once for the batch; 100 keeps one call's arguments (about 500, a few tens of KiB)
/// small and Redis's time in one atomic call about a millisecond, so other clients'
/// commands (the replicas' `XREAD`s) wait little behind it.
pub const FEED_MERGE_BATCH: usize = 100;

/// Certificates per write batch of `vigil import`: large enough that a batch fills several
/// pipelines ([`FEED_PIPELINE_CHUNK`]), small enough that a batch's events
/// stay a few MiB.
pub const IMPORT_BATCH_CERTIFICATES: usize = 5_000;

/// Batches `vigil import` writes at once: keeps every region's Redis busy while the next batch
/// is read, and bounds the memory of the import to this many batches.
pub const IMPORT_BATCHES_IN_FLIGHT: usize = 4;

/// Longest line accepted in an OpenSSL index file (`vigil import`): a subject DN is far
/// shorter; the bound keeps a file without newlines from being read whole.
pub const MAX_INDEX_LINE_BYTES: usize = 64 * 1024;
/// The largest PEM file `vigil import --pem` reads (each is read whole, then parsed): 64 MiB
/// holds about 30 000 certificates of 2 KiB in PEM; more files can be given at once.
pub const MAX_IMPORT_PEM_BYTES: u64 = 64 * 1024 * 1024;

/// Longest stream-entry id text accepted from Redis (`<u64>-<u64>`).
pub const MAX_STREAM_ID_BYTES: usize = 41;

/// Largest checkpoint section count accepted when loading (issuers, cursors): anything larger
/// is corruption, not a real deployment.
pub const MAX_CHECKPOINT_ISSUERS: usize = 4096;

/// Largest key file `vigil key split` reads, in bytes: a PKCS#8 RSA-8192 key in PEM is under
/// 7 KiB; 64 KiB leaves room for comments without reading an arbitrary file into memory.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// Largest share file `vigil key combine` reads, in bytes: a share is the key file in base64
/// (4/3 of [`MAX_KEY_FILE_BYTES`]) plus a few short header lines.
pub const MAX_KEY_SHARE_FILE_BYTES: usize = MAX_KEY_FILE_BYTES * 3 / 2;

/// Largest backup section payload, in bytes: a records section holds at most
/// `BACKUP_SECTION_RECORDS` (50 000) records of at most 1 + 21 + 11 bytes (about 1.7 MB), and a
/// CRL section one CRL (a 1.5 M-entry CRL is about 60 MB). Bounds the buffer one section needs.
pub const MAX_BACKUP_SECTION_BYTES: usize = 128 * 1024 * 1024;

/// Most sections in one backup: 10 M certificates are 200 records sections per source; this
/// leaves room for thousands of issuers and regions while refusing a file that claims more.
pub const MAX_BACKUP_SECTIONS: u64 = 10_000_000;

/// Longest source (region) name kept in a records section, in bytes.
pub const MAX_BACKUP_SOURCE_BYTES: usize = 255;

/// Largest archive block payload, in bytes: an events block holds at most
/// [`MAX_ARCHIVE_BLOCK_ENTRIES`] events of at most [`MAX_EVENT_BYTES`] (+ 18 bytes of id and
/// length), a fill block as many snapshot records of at most 33 bytes; both well under 16 MiB.
/// Bounds the buffer one block needs when a segment is read.
pub const MAX_ARCHIVE_BLOCK_BYTES: usize = 16 * 1024 * 1024;

/// Most entries (events, or snapshot records of a gap fill) in one archive block: one archive
/// read is at most [`ARCHIVE_READ_COUNT`] × [`FEED_ENTRY_MAX_EVENTS`] events; fills are cut at
/// this many records.
pub const MAX_ARCHIVE_BLOCK_ENTRIES: usize = 50_000;

/// Longest region name or data epoch kept in an archive block (a one-octet length).
pub const MAX_ARCHIVE_NAME_BYTES: usize = 255;

/// Most segment files `vigil archive verify` and a point-in-time restore read from one
/// directory: at the default 64 MiB a segment, a million segments are 64 TiB of events.
pub const MAX_ARCHIVE_SEGMENTS: usize = 1_000_000;

/// Most blocks in one segment: a segment is closed at its target size (64 MiB by default),
/// and its smallest blocks are about 60 bytes.
pub const MAX_ARCHIVE_SEGMENT_BLOCKS: u64 = 4_000_000;

/// Signing threads of one signer that may be stuck past their deadline at once, each replaced
/// by a new thread so the signing service keeps its capacity (`crate::signer::service`).
///
/// A stuck call is an HSM gone silent; the pool takes that HSM out after one such call, so a
/// few replacements cover a pool of a few HSMs each losing its session. Past this bound a
/// stuck thread is waited for rather than replaced: a dead network HSM cannot make vigil start
/// threads without end.
pub const MAX_STUCK_SIGNING_THREADS: usize = 4;

/// Longest a signature for a signer with a deadline (an HSM pool) waits in the queue before
/// its caller gets a timeout: every signing thread is stuck. Firefox's hard-fail OCSP timeout
/// is 10 s; an answer later than that is read by nobody.
pub const MAX_SIGNING_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Signing threads of one issuer's CRL signer. The publisher builds an issuer's CRLs one after
/// another (a complete CRL, then its delta), so one thread is never waited for by another CRL.
pub const CRL_SIGNING_THREADS: usize = 1;

/// CRL signatures waiting per issuer before more are refused: a complete CRL and its delta per
/// shard in one round, with room to spare; a refused CRL is retried on the next round.
pub const CRL_SIGNING_QUEUE: usize = 16;

/// Largest message a PKCS#11 host process is asked to sign, in bytes: the largest CRL vigil
/// builds (the benches' 1.5 M entries make a tbsCertList of about 55 MB) with room to spare.
/// OCSP tbsResponseData is a few KiB.
pub const MAX_HOST_SIGN_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Largest frame between vigil and a PKCS#11 host process: a message to sign and its header.
pub const MAX_HOST_FRAME_BYTES: usize = MAX_HOST_SIGN_MESSAGE_BYTES + 64 * 1024;

/// Longest text field of a host frame (names, labels, error messages, the log filter), bytes.
pub const MAX_HOST_TEXT_BYTES: usize = 4 * 1024;

/// Longest key material field of a host frame (a public key, a signature, a CKA_ID), bytes:
/// an RSA-16384 modulus is 2 KiB, so 16 KiB is far above any key a token holds.
pub const MAX_HOST_KEY_BYTES: usize = 16 * 1024;

/// Longest user PIN sent to a host process, bytes: PKCS#11 `ulMaxPinLen` is a CK_ULONG, but
/// tokens allow at most 255 (SoftHSM2, Luna, nShield).
pub const MAX_HOST_PIN_BYTES: usize = 255;

/// Most items of a list in a host frame (tokens of a module, keys of a token, PINs).
pub const MAX_HOST_LIST_ITEMS: usize = 4096;
