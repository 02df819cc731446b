#!/usr/bin/env bash
# Generates OCSP request corpora from vigil's demo PKI with `openssl ocsp -reqout`.
#
#   loadtest/gen-corpus.sh [--force]
#
# Uses (and makes, if missing) the demo PKI in $OUT_DIR/vigil-data (default loadtest/out/), then:
#   - records extra issuances with `vigil issue` and revokes some of them with `vigil revoke`,
#     and picks serials that stay unissued; the list is kept in corpus/serials.tsv, so a second
#     run reuses it instead of journaling new serials (--force starts over with a new PKI);
#   - writes one request per line, standard base64 of the DER, without nonce:
#       corpus/{good,revoked,unissued}-{sha1,sha256}.b64
#     and corpus/nonce-sha1.b64: requests for good-1 with a fresh 16-octet nonce each;
#   - writes single requests as DER for the peak runner:
#       corpus/good-1.sha1.der, corpus/good-1.sha1.nonce.der (a template: its nonce is
#       replaced per request);
#   - writes corpus/index.txt, an OpenSSL CA database of the same certificates and serials,
#     for `openssl ocsp -index`.
# Nothing here is checked in: loadtest/out/ is ignored by git.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need openssl base64 date
need_vigil

EXTRA_ISSUED="${EXTRA_ISSUED:-8}"   # extra serials journaled as issued (half are then revoked)
UNISSUED="${UNISSUED:-8}"           # serials never journaled
NONCE_REQUESTS="${NONCE_REQUESTS:-200}"

DATA="$OUT_DIR/vigil-data"
CORPUS="$OUT_DIR/corpus"

if [[ "${1:-}" == "--force" ]]; then
	rm -rf "$DATA" "$CORPUS"
fi
mkdir -p "$CORPUS"

# The demo PKI: `vigil check-config` makes it exactly as `vigil serve` would.
if [[ ! -f "$DATA/ca.pem" ]]; then
	log "making the demo PKI in $DATA"
	vigil_in "$DATA" check-config >/dev/null
fi
CA="$DATA/ca.pem"

cert_serial() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }
# A positive 16-octet serial with a non-zero first octet, upper-case hex.
random_serial() { openssl rand -hex 16 | tr 'a-f' 'A-F' | sed 's/^./4/'; }
# Unix seconds of the revocation vigil has for serial $1 ("... revoked at T (reason)").
revoked_at() { vigil_in "$DATA" status --issuer demo --serial "$1" | sed -n 's/.*revoked at \([0-9]*\).*/\1/p'; }
index_time() { date -u -d "@$1" +%y%m%d%H%M%SZ; }

SERIALS="$CORPUS/serials.tsv" # kind  serial(hex)  notAfter(unix)  revokedAt(unix or -)  subject
if [[ ! -s "$SERIALS" ]]; then
	log "journaling $EXTRA_ISSUED extra issuances (half revoked) and choosing $UNISSUED unissued serials"
	tmp="$SERIALS.tmp"
	: >"$tmp"
	for stem in good-1 good-2 revoked-1; do
		c="$DATA/certs/$stem.pem"
		s="$(cert_serial "$c")"
		na="$(date -u -d "$(openssl x509 -in "$c" -noout -enddate | cut -d= -f2)" +%s)"
		subj="$(openssl x509 -in "$c" -noout -subject -nameopt compat | sed 's/^subject=//')"
		case "$stem" in
		revoked-*) printf 'revoked\t%s\t%s\t%s\t%s\n' "$s" "$na" "$(revoked_at "$s")" "$subj" ;;
		*) printf 'good\t%s\t%s\t-\t%s\n' "$s" "$na" "$subj" ;;
		esac >>"$tmp"
	done
	not_after="$(date -u -d '+90 days' +%Y-%m-%dT%H:%M:%SZ)"
	na="$(date -u -d "$not_after" +%s)"
	for i in $(seq 1 "$EXTRA_ISSUED"); do
		s="$(random_serial)"
		vigil_in "$DATA" issue --issuer demo --serial "$s" --not-after "$not_after" >/dev/null
		subj="/O=vigil demo/CN=loadtest-$i.demo.vigil.invalid"
		if ((i % 2 == 0)); then
			rev="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
			vigil_in "$DATA" revoke --issuer demo --serial "$s" --reason keyCompromise --time "$rev" >/dev/null
			printf 'revoked\t%s\t%s\t%s\t%s\n' "$s" "$na" "$(date -u -d "$rev" +%s)" "$subj"
		else
			printf 'good\t%s\t%s\t-\t%s\n' "$s" "$na" "$subj"
		fi >>"$tmp"
	done
	for _ in $(seq 1 "$UNISSUED"); do
		printf 'unissued\t%s\t-\t-\t-\n' "$(random_serial)" >>"$tmp"
	done
	mv "$tmp" "$SERIALS"
fi

# OpenSSL CA database: status, expiry, revocation[,reason], serial, file, subject.
while IFS=$'\t' read -r kind serial na rev subj; do
	case "$kind" in
	good) printf 'V\t%s\t\t%s\tunknown\t%s\n' "$(index_time "$na")" "$serial" "$subj" ;;
	revoked) printf 'R\t%s\t%s,keyCompromise\t%s\tunknown\t%s\n' "$(index_time "$na")" "$(index_time "$rev")" "$serial" "$subj" ;;
	esac
done <"$SERIALS" >"$CORPUS/index.txt"

# One request per line, base64 DER.
request_b64() { # digest serial [nonce|no_nonce]
	openssl ocsp -issuer "$CA" "-$1" -serial "0x$2" "-${3:-no_nonce}" -reqout /dev/stdout 2>/dev/null | base64 -w0
	echo
}
for kind in good revoked unissued; do
	for digest in sha1 sha256; do
		f="$CORPUS/$kind-$digest.b64"
		: >"$f"
		while IFS=$'\t' read -r k serial _; do
			[[ "$k" == "$kind" ]] && request_b64 "$digest" "$serial" >>"$f"
		done <"$SERIALS"
	done
done

good1="$(cert_serial "$DATA/certs/good-1.pem")"
openssl ocsp -issuer "$CA" -sha1 -serial "0x$good1" -no_nonce -reqout "$CORPUS/good-1.sha1.der" 2>/dev/null
openssl ocsp -issuer "$CA" -sha1 -serial "0x$good1" -nonce -reqout "$CORPUS/good-1.sha1.nonce.der" 2>/dev/null
f="$CORPUS/nonce-sha1.b64"
: >"$f"
for _ in $(seq 1 "$NONCE_REQUESTS"); do
	request_b64 sha1 "$good1" nonce >>"$f"
done

log "corpus in $CORPUS:"
(cd "$CORPUS" && wc -l ./*.b64 | sed 's/^/  /' >&2)
