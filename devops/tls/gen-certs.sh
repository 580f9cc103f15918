#!/usr/bin/env bash
# Generates everything needed for mutual TLS on Erlang distribution between
# deployex and the nodes it runs:
#   ca.crt ca.key            a private CA (keep ca.key offline in production)
#   deployex.crt deployex.key  deployex's certificate (client and server)
#   node.crt node.key        the release nodes' certificate
#   inet_tls.conf            for `-ssl_dist_optfile` (erl / ELIXIR_ERL_OPTIONS)
#
# Usage: gen-certs.sh OUTDIR [HOSTNAME]
# HOSTNAME defaults to `hostname -s`: OTP checks the server certificate
# against the host part of the node name (name@HOST), so every certificate
# carries subjectAltName DNS:HOSTNAME (plus localhost and 127.0.0.1).
set -euo pipefail

usage() {
	echo "usage: $0 OUTDIR [HOSTNAME]" >&2
	exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
outdir=$1
host=${2:-$(hostname -s)}
days=${CERT_DAYS:-3650}

command -v openssl >/dev/null || {
	echo "openssl not found (Debian: apt-get install -y openssl)" >&2
	exit 1
}
[[ $host =~ ^[A-Za-z0-9.-]+$ ]] || {
	echo "invalid hostname: $host" >&2
	exit 2
}

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A P-256 key: supported by OTP's ssl and by rustls, and fast to generate.
new_key() {
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
	chmod 600 "$1"
}

new_key "$outdir/ca.key"
openssl req -x509 -new -key "$outdir/ca.key" -sha256 -days "$days" \
	-subj "/CN=deployex distribution CA" \
	-addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" \
	-out "$outdir/ca.crt"

cat >"$tmp/leaf.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1
EXT

# Both ends act as TLS server and client (either side may connect), hence
# serverAuth and clientAuth on each certificate.
for leaf in deployex node; do
	new_key "$outdir/$leaf.key"
	openssl req -new -key "$outdir/$leaf.key" -subj "/CN=$leaf@$host" -out "$tmp/$leaf.csr"
	openssl x509 -req -in "$tmp/$leaf.csr" -CA "$outdir/ca.crt" -CAkey "$outdir/ca.key" \
		-CAcreateserial -CAserial "$tmp/ca.srl" -sha256 -days "$days" \
		-extfile "$tmp/leaf.ext" -out "$outdir/$leaf.crt" 2>/dev/null
done

# fail_if_no_peer_cert: without it, verify_peer only checks a certificate
# *if* the client sends one, and a client with none gets in.
cat >"$outdir/inet_tls.conf" <<CONF
[{server, [{certfile, "$outdir/node.crt"},
           {keyfile, "$outdir/node.key"},
           {cacertfile, "$outdir/ca.crt"},
           {verify, verify_peer},
           {fail_if_no_peer_cert, true},
           {secure_renegotiate, true}]},
 {client, [{certfile, "$outdir/node.crt"},
           {keyfile, "$outdir/node.key"},
           {cacertfile, "$outdir/ca.crt"},
           {verify, verify_peer},
           {secure_renegotiate, true}]}].
CONF

echo "certificates for host $host written to $outdir"
