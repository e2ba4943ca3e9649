"""`kraken-relay cert`: files and modes, subjectAltNames, no silent overwrite, and a TLS websocket
server loading the files is accepted by a client that trusts only the written certificate."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
from pathlib import Path

import pytest
import websockets
import yaml
from cryptography import x509

from relay.cli import main as cli_main
from relay.config import ServerConfig, TlsConfig
from relay.ops.cert import CERT_NAME, KEY_NAME
from relay.server.listener import LocalServer


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli_main(["cert", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]


def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default: the certificate must pass it too
    return ctx


def test_writes_cert_and_key_with_modes_sans_and_config_lines(tmp_path, capsys):
    out_dir = tmp_path / "tls" / "new"  # created when missing
    rc, out, err = run(capsys, "--out-dir", str(out_dir))
    assert rc == 0, err
    crt, key = out_dir / CERT_NAME, out_dir / KEY_NAME
    assert mode(key) == 0o600 and mode(crt) == 0o644
    assert str(crt) in out and str(key) in out
    # the printed config lines are valid YAML naming the two files, as server.tls expects them
    block = out[out.index("server:") :].split("\n\n")[0]
    tls = yaml.safe_load(block)["server"]["tls"]
    assert TlsConfig(**tls) == TlsConfig(cert=str(crt), key=str(key))

    cert = load(crt)
    assert sans(cert) == (["localhost"], ["127.0.0.1", "::1"])
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.issuer == cert.subject  # self-signed: the certificate is its own trust anchor
    days = (cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)).days
    assert 824 <= days <= 825
    assert b"PRIVATE KEY" in key.read_bytes() and b"ENCRYPTED" not in key.read_bytes()


def test_hosts_are_repeatable_and_days_set_validity(tmp_path, capsys):
    rc, _, err = run(
        capsys, "--out-dir", str(tmp_path), "--host", "relay.lan", "--host", "192.0.2.10", "--host", "[fd00::2]"
    )
    assert rc == 0, err
    assert sans(load(tmp_path / CERT_NAME)) == (["relay.lan"], ["192.0.2.10", "fd00::2"])

    rc, _, err = run(capsys, "--out-dir", str(tmp_path / "short"), "--days", "30")
    assert rc == 0, err
    cert = load(tmp_path / "short" / CERT_NAME)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30  # not_before: 5 minutes back

    for bad in (["--host", "not a name"], ["--host", "bücher.example"], ["--days", "0"]):
        rc, _, err = run(capsys, "--out-dir", str(tmp_path / "bad"), *bad)
        assert rc == 2 and err.startswith("kraken-relay cert: "), bad
        assert not (tmp_path / "bad").exists()


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    assert run(capsys, "--out-dir", str(tmp_path))[0] == 0
    crt, key = tmp_path / CERT_NAME, tmp_path / KEY_NAME
    before = crt.read_bytes(), key.read_bytes()

    rc, out, err = run(capsys, "--out-dir", str(tmp_path))
    assert rc == 1 and out == ""
    assert "exists" in err and "--force" in err
    assert (crt.read_bytes(), key.read_bytes()) == before

    crt.unlink()  # a key alone still blocks: the pair is never mixed
    rc, _, err = run(capsys, "--out-dir", str(tmp_path))
    assert rc == 1 and str(key) in err and not crt.exists()

    key.chmod(0o644)
    rc, _, err = run(capsys, "--out-dir", str(tmp_path), "--force")
    assert rc == 0, err
    assert key.read_bytes() != before[1] and mode(key) == 0o600 and mode(crt) == 0o644


async def test_tls_websocket_server_accepts_a_client_trusting_the_cert(tmp_path, capsys):
    assert run(capsys, "--out-dir", str(tmp_path))[0] == 0
    crt, key = tmp_path / CERT_NAME, tmp_path / KEY_NAME
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # as relay/server/listener.py loads server.tls
    server_ctx.load_cert_chain(str(crt), str(key))

    async def echo(ws) -> None:
        async for msg in ws:
            await ws.send(msg)

    async with websockets.serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        for host in ("127.0.0.1", "localhost"):  # an IP and a DNS subjectAltName
            async with websockets.connect(f"wss://{host}:{port}/v2", ssl=client_context(crt)) as ws:
                await ws.send('{"method":"ping"}')
                assert await asyncio.wait_for(ws.recv(), 5) == '{"method":"ping"}'

        # without trusting the file, or for a name not in the certificate: refused
        with pytest.raises(ssl.SSLCertVerificationError, match="self-signed|self signed"):
            await websockets.connect(f"wss://127.0.0.1:{port}/v2", ssl=ssl.create_default_context(cafile=None))
        other = tmp_path / "other"
        assert run(capsys, "--out-dir", str(other), "--host", "relay.example")[0] == 0
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(
                f"wss://127.0.0.1:{port}/v2", ssl=client_context(other / CERT_NAME), open_timeout=5
            )


async def test_relay_listener_loads_the_files(tmp_path, capsys):
    """The relay's own listener with `server.tls` set to the printed paths completes the TLS
    handshake with a trusting client (no endpoint is registered: the HTTP answer is 404)."""
    assert run(capsys, "--out-dir", str(tmp_path))[0] == 0
    cfg = ServerConfig(tls=TlsConfig(cert=str(tmp_path / CERT_NAME), key=str(tmp_path / KEY_NAME)))
    server = LocalServer(cfg, port=0)
    await server.start()
    try:
        assert server.url_for("/v2").startswith("wss://127.0.0.1:")
        with pytest.raises(websockets.InvalidStatus) as exc:
            await websockets.connect(server.url_for("/v2"), ssl=client_context(tmp_path / CERT_NAME), open_timeout=5)
        assert exc.value.response.status_code == 404
    finally:
        await server.stop()
