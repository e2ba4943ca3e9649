"""`kraken-relay cert`: a self-signed certificate and key for the relay's TLS listener.

Writes `kraken-relay.crt` (PEM certificate, mode 0644) and `kraken-relay.key` (PEM private key,
mode 0600) to `--out-dir`, then prints both paths and the `server.tls` lines to put in the
config. The certificate is its own trust anchor: a client trusts the relay by trusting that one
file (`ssl.create_default_context(cafile=...)`, `SSL_CERT_FILE`, the system store).

The certificate is an end-entity certificate (ECDSA P-256, SHA-256, `CA:FALSE`, `serverAuth`)
whose subjectAltNames are the `--host` names (default: localhost, 127.0.0.1, ::1). Existing
files are never overwritten without `--force`. Exit 0 ok, 2 bad usage, 1 when a file exists or
cannot be written.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

CERT_NAME = "kraken-relay.crt"
KEY_NAME = "kraken-relay.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 825  # the longest validity clients that cap server certificates (Apple's) accept

_DNS_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)
_PLAIN_YAML = re.compile(r"[A-Za-z0-9_./-]+")


class CertError(Exception):
    """A file exists (without --force) or cannot be written; the message is one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Write a self-signed certificate and key for the relay's TLS listener (server.tls)."
    parser.add_argument(
        "--out-dir",
        metavar="DIR",
        default=".",
        help=f"directory for {CERT_NAME} and {KEY_NAME} (created if missing; default: current directory)",
    )
    parser.add_argument(
        "--host",
        metavar="NAME",
        action="append",
        dest="hosts",
        help="a DNS name or IP address clients connect to (repeatable; default: " + ", ".join(DEFAULT_HOSTS) + ")",
    )
    parser.add_argument(
        "--days", metavar="N", type=int, default=DEFAULT_DAYS, help=f"validity in days (default {DEFAULT_DAYS})"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def parse_host(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """An IP address (brackets allowed: `[::1]`) or a DNS name; ValueError for anything else."""
    text = name.strip()
    try:
        return ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        pass
    if not text.isascii() or len(text) > 253 or not _DNS_NAME.fullmatch(text):
        raise ValueError(f"--host {name!r}: not an IP address or an (ASCII, IDNA-encoded) DNS name")
    return text.rstrip(".").lower()


def self_signed(hosts: Sequence[str], days: int = DEFAULT_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, unencrypted PKCS#8 key PEM) for `hosts` as subjectAltNames."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if days < 1:
        raise ValueError("--days: must be at least 1")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(parse_host(h) for h in hosts):  # order kept, duplicates dropped
        names.append(x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host))
    if not names:
        raise ValueError("--host: at least one name is needed")
    first = str(parse_host(hosts[0]))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first if len(first) <= 64 else "kraken-relay")])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a client clock a little behind
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_self_signed(
    out_dir: Path, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS, force: bool = False
) -> tuple[Path, Path]:
    """Write (cert, key) into `out_dir`; CertError if either exists and not `force`."""
    cert_pem, key_pem = self_signed(hosts, days)  # ValueError before anything is touched
    out_dir = out_dir.expanduser().absolute()
    cert_path, key_path = out_dir / CERT_NAME, out_dir / KEY_NAME
    if not force:
        for path in (cert_path, key_path):
            if path.exists() or path.is_symlink():
                raise CertError(f"{path} exists; not overwritten (use --force)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write(key_path, key_pem, 0o600, force)
        _write(cert_path, cert_pem, 0o644, force)
    except FileExistsError as exc:
        raise CertError(f"{exc.filename} exists; not overwritten (use --force)") from exc
    except OSError as exc:
        raise CertError(f"{exc.filename or out_dir}: {exc.strerror or exc}") from exc
    return cert_path, key_path


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create `path` with `mode` from the start (a key is never readable by others, not even
    briefly); `force` replaces an existing file, giving it `mode` too."""
    if force and (path.is_symlink() or path.exists()):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits (never added: 0600 stays 0600)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def config_lines(cert: Path, key: Path) -> str:
    """The `server.tls` lines for the relay's YAML config."""
    return f"server:\n  tls: {{cert: {_yaml_str(str(cert))}, key: {_yaml_str(str(key))}}}\n"


def _yaml_str(text: str) -> str:
    return text if _PLAIN_YAML.fullmatch(text) else json.dumps(text)  # a JSON string is a YAML string


def main(args: argparse.Namespace) -> int:
    hosts = args.hosts or list(DEFAULT_HOSTS)
    try:
        cert, key = write_self_signed(Path(args.out_dir), hosts, args.days, args.force)
    except ValueError as exc:
        print(f"kraken-relay cert: {exc}", file=sys.stderr)
        return 2
    except CertError as exc:
        print(f"kraken-relay cert: {exc}", file=sys.stderr)
        return 1
    print(f"certificate: {cert}")
    print(f"key:         {key}")
    names = dict.fromkeys(str(parse_host(h)) for h in hosts)
    print(f"valid {args.days} days for {', '.join(names)}")
    print("\nadd to the relay's config:\n")
    print(config_lines(cert, key))
    print(f"clients connect with wss:// and trust {cert} (README: 'Pointing your client at the relay')")
    return 0
