#!/usr/bin/env python3
"""Seeds a feed region's snapshot directly, for benchmarks at 10 M certificates where
`vigil import` would take most of the run: writes, as Redis protocol on stdout for
`redis-cli --pipe`, the records `vigil import` makes from the bench's index (serial i =
1..N; every tenth revoked keyCompromise at 2025-01-01, the rest valid until 2030-01-01),
the issuers set and the issuer's digest (XOR of SHA-1(serial | record), as the merge script
keeps it). No stream entries: replicas and `vigil archive` see the records only through a
snapshot read, which is all a backup reads too.

    python3 loadtest/seed-snapshot.py N ISSUER_HEX [PREFIX] | redis-cli -p PORT --pipe

`backup-bench.sh` (SEED=direct) checks the result against `vigil import` of the first
certificates, so the two cannot drift apart unnoticed.
"""
import hashlib
import struct
import sys

NOT_AFTER = 1893456000  # 300101000000Z
REVOKED_AT = 1735689600  # 250101000000Z
KEY_COMPROMISE = 1
NOT_REVOKED = 0xFF
PER_COMMAND = 1000


def serial(i):
    b = i.to_bytes((i.bit_length() + 7) // 8, "big")
    return b"\x00" + b if b[0] & 0x80 else b


def record(i):
    if i % 10 == 0:
        return struct.pack(">IIB", NOT_AFTER, REVOKED_AT, KEY_COMPROMISE)
    return struct.pack(">IIB", NOT_AFTER, 0, NOT_REVOKED)


def command(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def main():
    n = int(sys.argv[1])
    issuer = sys.argv[2]
    prefix = sys.argv[3] if len(sys.argv) > 3 else "vigil"
    key = f"{prefix}:snap:{issuer}".encode()
    out = sys.stdout.buffer
    digest = 0
    good, revoked = record(1), record(10)
    for start in range(1, n + 1, PER_COMMAND):
        end = min(start + PER_COMMAND, n + 1)
        parts = [b"HSET", key]
        for i in range(start, end):
            s = serial(i)
            r = revoked if i % 10 == 0 else good
            parts.append(s)
            parts.append(r)
            digest ^= int.from_bytes(hashlib.sha1(s + r).digest(), "big")
        out.write(command(*parts))
    out.write(command("SADD", f"{prefix}:issuers", issuer))
    out.write(command("HSET", f"{prefix}:digest", issuer, "%040x" % digest))
    out.flush()


if __name__ == "__main__":
    main()
