"""deploy/multi-host: two regional relays publishing on a 3-node NATS cluster, edge relays reading
both regions as NATS lines. Every file is checked the way deploy/'s are: relay configs by
check-config, nats-server configs by `nats-server -t`, the unit by systemd-analyze, the Prometheus
config by promtool, the compose file parsed and every file it names present; and the example runs:
the shipped nats-server and relay configs, pointed at loopback and the simulator, bring an edge
relay to ready with valid books (tools missing: those tests skip naming the tool).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.cli import main as cli_main
from relay.config import load_config, nats_servers, parse_config
from tests.kit.net import free_port
from tests.kit.paths import ROOT

HERE = ROOT / "deploy" / "multi-host"
RELAYS = HERE / "relays"
NATS_CONFS = sorted((HERE / "nats").glob("nats-*.conf"))
NATS_UNIT = HERE / "systemd" / "nats-server@.service"
NATS_BIN = "/usr/sbin/nats-server"
COMPOSE = HERE / "docker-compose.yml"
REGIONS = ("eu", "us")
NODES = [p.stem for p in NATS_CONFS]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (run .ci/install-tools)")
    return path


def run(*argv: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "KRAKEN_RELAY_LISTEN",
        "KRAKEN_RELAY_HTTP_LISTEN",
        "KRAKEN_RELAY_LOG_LEVEL",
        "KRAKEN_RELAY_LOG_FORMAT",
        "KRAKEN_RELAY_TOKEN",
        "KRAKEN_RELAY_PUBLIC_WITHOUT_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<: *relay` merge keys


def nats_conf(path: Path) -> dict[str, Any]:
    """The few nats-server settings the example relies on (the format is not YAML: read by regex)."""
    text = path.read_text()

    def one(pattern: str) -> str:
        m = re.search(pattern, text, re.M)
        assert m, f"{path.name}: no match for {pattern}"
        return m.group(1)

    cluster = re.search(r"^cluster \{(.*?)^\}", text, re.M | re.S)
    assert cluster, f"{path.name}: no cluster block"
    return {
        "server_name": one(r"^server_name: (\S+)"),
        "port": int(one(r"^port: (\d+)")),
        "http_port": int(one(r"^http_port: (\d+)")),
        "cluster_name": re.search(r"^\s+name: (\S+)", cluster.group(1), re.M).group(1),  # type: ignore[union-attr]
        "cluster_port": int(re.search(r"^\s+port: (\d+)", cluster.group(1), re.M).group(1)),  # type: ignore[union-attr]
        "routes": re.findall(r"nats-route://([\w.-]+:\d+)", cluster.group(1)),
        "store_dir": one(r"^\s+store_dir: (\S+)"),
    }


def test_the_readme_names_every_file_and_port() -> None:
    readme = (HERE / "README.md").read_text()
    for path in sorted(HERE.rglob("*")):
        if path.is_file() and path.name != "README.md":
            rel = path.relative_to(HERE).as_posix()
            short = re.sub(r"nats-\d\.conf$", "nats-{1,2,3}.conf", rel)
            assert rel in readme or short in readme or path.name in readme, f"README.md does not mention {rel}"
    for port in ("4222", "6222", "8222", "8765", "9100"):
        assert f"| {port} |" in readme, port


# -- relay configs --------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(p.name for p in RELAYS.glob("*.yaml")))
def test_every_relay_config_passes_check_config(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["check-config", str(RELAYS / path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("config ok:") and "2 upstreams" in out


def test_the_roles_fit_together() -> None:
    """Regional relays publish what the edges read: prefixes, channels, depth, the NATS nodes."""
    node_urls = {f"nats://{n}:4222" for n in NODES}
    edge = load_config(RELAYS / "edge.yaml", env={})
    regionals = {r: load_config(RELAYS / f"relay-{r}.yaml", env={}) for r in REGIONS}
    for region, cfg in regionals.items():
        assert cfg.nats is not None and cfg.nats.jetstream is not None
        assert cfg.nats.subject_prefix == f"kraken.{region}" and cfg.nats.name == f"relay-{region}"
        assert set(cfg.nats.servers) == node_urls
        assert cfg.nats.jetstream.replicas <= len(NODES)
        assert all(not u.is_nats for u in cfg.upstreams)
        assert cfg.server.listen.startswith("127.0.0.1:")
    assert regionals["eu"].channels == regionals["us"].channels
    lines = {u.subject_prefix: u for u in edge.upstreams}
    assert set(lines) == {f"kraken.{r}" for r in REGIONS}
    for u in edge.upstreams:
        assert u.is_nats and u.protocol == "v2" and set(nats_servers(u.url)) == node_urls
    # only what the regional relays subscribe travels over NATS
    regional = regionals["eu"].channels
    for channel in ("book", "trade", "ticker", "ohlc"):
        mine, theirs = getattr(edge.channels, channel), getattr(regional, channel)
        if mine is not None:
            assert theirs is not None and set(mine.symbols) <= set(theirs.symbols), channel
    assert edge.channels.book is not None and regional.book is not None
    assert edge.channels.book.depth <= regional.book.depth
    assert edge.channels.instrument and regional.instrument
    assert edge.server.dynamic_subscriptions.enabled is False
    assert edge.server.listen.startswith("127.0.0.1:") and edge.server.token is None


@pytest.mark.parametrize("region", REGIONS)
def test_compose_configs_are_the_host_configs_plus_the_egress_address(region: str) -> None:
    host = load_config(RELAYS / f"relay-{region}.yaml", env={}).model_dump()
    boxed = load_config(RELAYS / f"relay-{region}.compose.yaml", env={})
    sources = {u.source_address for u in boxed.upstreams}
    assert len(sources) == 1 and None not in sources
    dumped = boxed.model_dump()
    for u in dumped["upstreams"]:
        u["source_address"] = None
    assert dumped == host
    # the address is the container's own, on its region's egress network
    svc = compose()["services"][f"relay-{region}"]
    address = svc["networks"][f"egress-{region}"]["ipv4_address"]
    assert sources == {address}
    subnet = compose()["networks"][f"egress-{region}"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


# -- docker compose -------------------------------------------------------------------------
def test_compose_file_parses_and_references_existing_files() -> None:
    doc = compose()
    services, networks, volumes = doc["services"], doc["networks"], doc.get("volumes") or {}
    assert {"nats-1", "nats-2", "nats-3", "relay-eu", "relay-us", "edge"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (HERE / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            assert svc["image"] == "kraken-relay:latest"
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith("."):
                assert (HERE / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: named volume {source} not declared"
        nets = svc.get("networks") or {}
        for net in nets:
            assert net in networks, f"{name}: network {net} not declared"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} published beyond loopback"
        for dep in svc.get("depends_on") or []:
            assert dep in services, f"{name}: depends on unknown {dep}"
    published = [p.split(":")[1] for svc in services.values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), "a host port published twice"
    assert networks["bus"].get("internal") is True


def test_compose_mounts_each_role_at_the_images_config_path() -> None:
    services = compose()["services"]
    mounts = {
        name: dict(v.split(":")[:2][::-1] for v in svc["volumes"] if v.startswith("."))
        for name, svc in services.items()
        if svc.get("image") == "kraken-relay:latest"
    }
    assert mounts == {
        "relay-eu": {"/etc/kraken-relay/relay.yaml": "./relays/relay-eu.compose.yaml"},
        "relay-us": {"/etc/kraken-relay/relay.yaml": "./relays/relay-us.compose.yaml"},
        "edge": {"/etc/kraken-relay/relay.yaml": "./relays/edge.yaml"},
    }
    for node in NODES:
        svc = services[node]
        conf = nats_conf(HERE / "nats" / f"{node}.conf")
        assert svc["command"] == ["nats-server", "--config", f"/etc/nats/{node}.conf"]
        assert f"./nats/{node}.conf:/etc/nats/{node}.conf:ro" in svc["volumes"]
        assert f"{node}-data:{conf['store_dir']}" in svc["volumes"]
        assert "bus" in svc["networks"] and svc["stop_signal"] == "SIGUSR2"
    # the relays reach the NATS nodes (bus) and leave through their own egress network
    assert set(services["relay-eu"]["networks"]) == {"bus", "egress-eu"}
    assert set(services["relay-us"]["networks"]) == {"bus", "egress-us"}
    assert "bus" in services["edge"]["networks"] and "bus" in services["prometheus"]["networks"]


def test_docker_compose_config_accepts_the_file() -> None:
    docker = tool("docker")
    if run(docker, "compose", "version").returncode != 0:
        pytest.skip("docker compose (the compose plugin) not installed")
    res = run(docker, "compose", "-f", str(COMPOSE), "config", "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr


# -- nats-server ----------------------------------------------------------------------------
def test_nats_server_configs_form_one_cluster() -> None:
    confs = [nats_conf(p) for p in NATS_CONFS]
    assert [c["server_name"] for c in confs] == NODES == ["nats-1", "nats-2", "nats-3"]
    assert {c["cluster_name"] for c in confs} == {"kraken-relay"}
    for c in confs:
        assert (c["port"], c["cluster_port"], c["http_port"]) == (4222, 6222, 8222)
        assert sorted(c["routes"]) == [f"{n}:6222" for n in NODES]
        assert c["store_dir"] == f"/var/lib/nats/{c['server_name']}"  # systemd StateDirectory=nats/%i


@pytest.mark.parametrize("conf", [p.name for p in NATS_CONFS])
def test_nats_server_accepts_the_config(conf: str, tmp_path: Path) -> None:
    exe = tool("nats-server")
    res = run(exe, "-t", "-c", str(HERE / "nats" / conf))
    assert res.returncode == 0 and "is valid" in res.stdout + res.stderr, res.stdout + res.stderr
    broken = tmp_path / conf  # -t does reject a mistake
    broken.write_text((HERE / "nats" / conf).read_text().replace("cluster {", "clustr {"))
    res = run(exe, "-t", "-c", str(broken))
    assert res.returncode != 0 and "clustr" in res.stdout + res.stderr


# -- systemd --------------------------------------------------------------------------------
def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in NATS_UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_nats_unit_settings() -> None:
    d = unit_directives()
    assert d["Service.ExecStartPre"] == [f"{NATS_BIN} -t -c /etc/nats/%i.conf"]
    assert d["Service.ExecStart"] == [f"{NATS_BIN} -c /etc/nats/%i.conf"]
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.KillSignal"] == ["SIGUSR2"]  # lame duck mode
    assert d["Service.Restart"] == ["always"] and d["Service.StateDirectory"] == ["nats/%i"]
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert d[f"Service.{key}"] == [value], key
    # the lame duck period fits in the stop timeout
    lame = {int(re.search(r'lame_duck_duration: "(\d+)s"', p.read_text()).group(1)) for p in NATS_CONFS}  # type: ignore[union-attr]
    assert max(lame) + 10 <= int(d["Service.TimeoutStopSec"][0].rstrip("s"))


@pytest.fixture
def nats_instance(tmp_path: Path) -> Path:
    """The template as instance nats-server@nats-1 (verify needs one), the binary a shim if absent."""
    text = NATS_UNIT.read_text()
    if not Path(NATS_BIN).exists():
        shim = tmp_path / "nats-server"
        shim.write_text("#!/bin/sh\nexit 0\n")
        shim.chmod(0o755)
        text = text.replace(NATS_BIN, str(shim))
    (tmp_path / "nats-server@.service").write_text(text)
    unit = tmp_path / "nats-server@nats-1.service"
    unit.write_text(text)
    return unit


def test_nats_unit_verifies(nats_instance: Path) -> None:
    exe = tool("systemd-analyze")
    for unit in (nats_instance, nats_instance.parent / "nats-server@.service"):
        res = run(exe, "verify", str(unit), cwd=unit.parent)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stderr.strip() == "", res.stderr


def test_nats_unit_security_exposure_is_low(nats_instance: Path) -> None:
    res = run(
        tool("systemd-analyze"),
        "security",
        "--offline=true",
        "--threshold=20",
        str(nats_instance),
        cwd=nats_instance.parent,
    )
    if "--offline" in res.stderr or "unrecognized option" in res.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr


# -- Prometheus -----------------------------------------------------------------------------
def test_promtool_checks_the_multi_host_prometheus_config(tmp_path: Path) -> None:
    promtool = tool("promtool")
    shutil.copy(HERE / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")  # as compose mounts it
    res = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    doc = yaml.safe_load((HERE / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in doc["scrape_configs"] if j["job_name"] == "kraken-relay")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"relay-eu:9100", "relay-us:9100", "edge:9100"}
    assert set(compose()["services"]) >= {t.split(":")[0] for t in targets}


# -- the example, run on loopback -----------------------------------------------------------
def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.asynccontextmanager
async def shipped_cluster(tmp: Path) -> AsyncIterator[dict[str, int]]:
    """The three shipped nats-server configs, each on loopback with its own free ports and store;
    yields node name -> client port once every node's /healthz (JetStream included) answers."""
    binary = tool("nats-server")
    ports = {n: (free_port(), free_port(), free_port()) for n in NODES}  # client, cluster, monitor
    procs = []
    try:
        for node in NODES:
            text = (HERE / "nats" / f"{node}.conf").read_text()
            client, cluster, monitor = ports[node]
            text = text.replace("host: 0.0.0.0", "host: 127.0.0.1")
            text = re.sub(r"^port: 4222$", f"port: {client}", text, flags=re.M)
            text = re.sub(r"^http_port: 8222$", f"http: 127.0.0.1:{monitor}", text, flags=re.M)
            text = re.sub(r"^(\s+)port: 6222$", rf"\g<1>port: {cluster}", text, flags=re.M)
            for other in NODES:
                text = text.replace(f"nats-route://{other}:6222", f"nats-route://127.0.0.1:{ports[other][1]}")
            text = text.replace(f"/var/lib/nats/{node}", str(tmp / node))
            conf = tmp / f"{node}.conf"
            conf.write_text(text)
            with open(tmp / f"{node}.log", "wb") as log:
                procs.append(subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT))
        for _ in range(300):
            if all(_http_ok(f"http://127.0.0.1:{ports[n][2]}/healthz") for n in NODES):
                break
            assert all(p.poll() is None for p in procs), (tmp / "nats-1.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the cluster was not healthy in 30 s")
        yield {n: ports[n][0] for n in NODES}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def localized(name: str, ports: dict[str, int], sim_urls: list[str]) -> dict[str, Any]:
    """A shipped relay config with the NATS nodes on loopback and Kraken replaced by simulator lines."""
    text = (RELAYS / name).read_text()
    for node, port in ports.items():
        text = text.replace(f"nats://{node}:4222", f"nats://127.0.0.1:{port}")
    data = yaml.safe_load(text)
    assert "nats-" not in str(data.get("nats", "")) + str(data["upstreams"]), "a NATS node name left"
    for i, up in enumerate(data["upstreams"]):
        if not up["url"].startswith("nats://"):
            up["url"] = sim_urls.pop(0)
            up.pop("source_address", None)
        assert i < 2
    data["http"] = {"listen": "127.0.0.1:9100"}  # the port is chosen by Relay(http_port=0)
    data["reconnect"] = {"initial_delay": 0.05, "max_delay": 0.4, "stagger": 0.02}
    data["logging"] = {"level": "warning", "format": "json"}
    return data


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_shipped_configs_run_together(tmp_path: Path) -> None:
    import nats

    from relay.app import Relay
    from relay.sim import LineConfig, SimConfig, Simulator
    from tests.kit.feed import FeedRecorder
    from tests.kit.inprocess import wait_for

    edge_symbols = ["BTC/USD", "ETH/USD"]
    async with shipped_cluster(tmp_path) as ports:
        symbols = load_config(RELAYS / "relay-eu.yaml", env={}).channels.all_symbols()
        sim = Simulator(SimConfig(symbols=symbols, rate=120.0, seed=17, lines=[LineConfig() for _ in range(4)]))
        await sim.start()
        relays: list[Relay] = []
        try:
            urls = list(sim.urls)
            for name in ("relay-eu.yaml", "relay-us.yaml", "edge.yaml"):
                relay = Relay(parse_config(localized(name, ports, urls), env={}), server_port=0, http_port=0)
                await relay.start()
                relays.append(relay)
            eu, us, edge = relays

            def publishing(r: Relay) -> bool:
                return bool(r.ready()[0]) and r.nats is not None and r.nats.stats()["jetstream_ok"] is True

            for regional in (eu, us):
                await wait_for(functools.partial(publishing, regional), 60, "a regional relay ready, its stream set up")
            # each region's stream on all three nodes (replicas 3 in the shipped configs)
            nc = await nats.connect(f"nats://127.0.0.1:{ports['nats-1']}")
            try:
                for stream in ("KRAKEN_EU", "KRAKEN_US"):
                    info = await nc.jetstream().stream_info(stream)
                    assert info.config.num_replicas == 3 and info.cluster is not None
                    assert len(info.cluster.replicas or []) == 2, stream  # the leader and two replicas
            finally:
                await nc.close()
            await wait_for(lambda: edge.ready()[0], 60, "the edge ready on its two NATS lines")
            await wait_for(
                lambda: all(c.state == "live" for c in edge.stack("v2").pool.connections), 30, "both NATS lines live"
            )
            async with FeedRecorder(edge.server.url, edge_symbols) as feed:
                await wait_for(lambda: all(len(feed.states[s]) >= 10 for s in edge_symbols), 60, "books moving")
            assert feed.bad == 0 and feed.disconnects == 0
            wins = {s.name: s.wins for s in edge.stack("v2").merge.upstream_stats}
            assert set(wins) == {"eu", "us"}
            for regional in (eu, us):
                stats = regional.nats.stats()  # type: ignore[union-attr]
                assert stats["connected"] == 1 and stats["messages"] > 0 and stats["snapshot_requests"].get("ok", 0) > 0
        finally:
            for relay in reversed(relays):
                await relay.stop()
            await sim.stop()
