"""The deployment files under ``deploy/``: parsed, checked against each other and against the gateway's settings,
and run through the tools that can check them here.

``nginx -t`` and ``gateway check`` always run (nginx skips, or fails under GATEWAY_TEST_STRICT=1, like the other
system binaries). PyYAML reads the compose and Kubernetes files: without it those tests skip, or fail in strict
mode. ``systemd-analyze``, ``docker compose`` and ``kubectl`` are optional extras: CI does not install them, so
their tests only ever skip when they are missing.
"""

from __future__ import annotations

import ast
import importlib
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gateway.config import ServerSettings, SSESettings
from tests.support.nginx import WRAPPER, running_nginx
from tests.support.server import ROOT, STRICT, Server, free_port, require_binary

pytestmark = pytest.mark.timeout(60)

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "gateway@.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "gateway.env.example"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
COMPOSE_TLS = DEPLOY / "compose" / "compose.tls.yaml"
COMPOSE_NGINX = DEPLOY / "compose" / "nginx.conf"
COMPOSE_NGINX_TLS = DEPLOY / "compose" / "nginx-tls.conf"
SHIPPED_NGINX = DEPLOY / "nginx" / "gateway.conf"
K8S = DEPLOY / "k8s"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))

DEFAULT_DRAIN = ServerSettings().drain_timeout
HEARTBEAT = SSESettings().heartbeat


# --- helpers ---------------------------------------------------------------------------------------------------------


def require_module(name: str, package: str) -> ModuleType:
    """A Python module the dev extra should provide; skip without it, or fail when GATEWAY_TEST_STRICT=1."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not importable (pip install {package}: it belongs in the dev extra)"
        if STRICT:
            pytest.fail(message + "; GATEWAY_TEST_STRICT=1 makes this a failure")
        pytest.skip(message)


def optional_tool(name: str) -> str:
    """A tool CI does not install: its absence is a plain skip, strict mode or not."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (optional: .ci/run does not install it, so strict mode skips too)")
    return path


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, cwd=cwd, env=env)


def load_yaml(path: Path) -> list[Any]:
    yaml = require_module("yaml", "pyyaml")
    return list(yaml.safe_load_all(path.read_text()))


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load_yaml(path) if doc]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads them (this file uses no quoting)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not KEY=VALUE: {line!r}"
            values[key] = value
    return values


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given (keys may repeat), comments and blank lines dropped."""
    section, settings = "", dict[str, list[str]]()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def seconds(duration: str | int | float) -> float:
    """A compose or systemd duration (``45s``, ``1m30s``) or a bare number of seconds."""
    if isinstance(duration, int | float) or re.fullmatch(r"\d+(\.\d+)?", str(duration)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    joined, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            instruction, _, args = full.partition(" ")
            joined.append((instruction.upper(), args.strip()))
    return joined


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec (JSON) form: {args}"
    assert all(isinstance(v, str) for v in value), f"not exec (JSON) form: {args}"
    return value


def python_probe(argv: list[str]) -> str:
    """The code of a ``python -c CODE`` health check (the slim image has no curl), checked to be valid Python."""
    assert argv[:2] == ["python", "-c"], f"expected a python -c health check, got {argv}"
    ast.parse(argv[2])
    return argv[2]


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset, as in a clean shell."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def bind_port(args: list[str]) -> int:
    return int(args[args.index("--bind") + 1].rpartition(":")[2])


def drain_of(env: dict[str, str]) -> float:
    return float(env.get("GATEWAY_SERVER_DRAIN_TIMEOUT", DEFAULT_DRAIN))


def compose_services() -> dict[str, dict[str, Any]]:
    (compose,) = load_yaml(COMPOSE)
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def compose_gateways() -> dict[str, dict[str, Any]]:
    """The services built from deploy/docker/Dockerfile."""
    gateways = {}
    for name, service in compose_services().items():
        build = service.get("build")
        if isinstance(build, dict):
            context = (COMPOSE.parent / build["context"]).resolve()
            if (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE:
                gateways[name] = service
    return gateways


def gateway_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``gateway check`` with exactly these settings: none inherited from the caller's GATEWAY_* environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return run([sys.executable, "-m", "gateway", "check"], env={**clean, **env}, timeout=60)


# --- every file ------------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(DEPLOY)) for p in YAML_FILES])
def test_yaml_file_parses(path: Path) -> None:
    documents = load_yaml(path)
    assert documents, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in documents), f"{path}: every document must be a mapping"


@pytest.mark.unit
def test_readme_describes_every_deploy_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    files = [p.relative_to(DEPLOY) for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"]
    missing = [str(f) for f in files if str(f) not in readme and f.name not in readme]
    assert not missing, f"deploy/README.md does not describe {missing}"
    assert "Until the Redis bus lands" not in readme


# --- systemd ---------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_systemd_unit_supervises_and_outlasts_the_drain() -> None:
    unit, env = unit_settings(UNIT), env_file(ENV_EXAMPLE)
    assert unit["Service.Type"] == ["simple"]  # the gateway does not speak sd_notify
    (exec_start,) = unit["Service.ExecStart"]
    assert re.match(r"/\S+/gateway serve ", exec_start), exec_start
    assert "%i" in exec_start, "the instance name must choose the port"
    assert unit["Service.EnvironmentFile"] == ["/etc/gateway/gateway.env"]
    assert unit["Service.KillSignal"] == ["SIGTERM"]
    assert unit["Service.Restart"] == ["always"]
    assert seconds(unit["Service.RestartSec"][0]) > 0
    timeout_stop = seconds(unit["Service.TimeoutStopSec"][0])
    assert timeout_stop > drain_of(env) + 5, f"TimeoutStopSec={timeout_stop} would SIGKILL a {drain_of(env)} s drain"
    assert int(unit["Service.LimitNOFILE"][0]) >= 65_536, "every stream is a socket"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "DynamicUser": "yes"}.items():
        assert unit.get(f"Service.{key}") == [value], f"{key}={value} expected"
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def _unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at an existing binary (the gateway is not installed in /opt here)."""
    true = shutil.which("true") or "/bin/true"
    text, count = re.subn(r"^ExecStart=/\S+/gateway ", f"ExecStart={true} ", UNIT.read_text(), flags=re.M)
    assert count == 1, "the unit's ExecStart layout changed: update _unit_for_verify()"
    (tmp_path / UNIT.name).write_text(text)
    return tmp_path / "gateway@8001.service"


@pytest.mark.live
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = optional_tool("systemd-analyze")
    result = run([tool, "verify", "--man=no", str(_unit_for_verify(tmp_path))])
    # verify exits 0 on unknown keys or unparsable values, only warning: any output is a finding.
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip(), "systemd-analyze verify warned"


@pytest.mark.live
def test_systemd_unit_security_rating(tmp_path: Path) -> None:
    tool = optional_tool("systemd-analyze")
    result = run([tool, "security", "--offline=true", "--no-pager", str(_unit_for_verify(tmp_path))])
    if "--offline" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) < 2.0, f"exposure {found[1]} {found[2]}: the unit lost some of its hardening"


# --- Dockerfile ------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_dockerfile_is_multi_stage_non_root_and_checks_healthz() -> None:
    instructions = dockerfile_instructions()
    stages = [args for ins, args in instructions if ins == "FROM"]
    assert len(stages) >= 2, "build the wheels in one stage, run them in another"
    assert stages[-1].split()[0] == "python:3.11-slim"
    final = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM"):]
    last = dict(final)  # the last of each instruction in the runtime stage

    user = last.get("USER", "root").split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"

    assert last["STOPSIGNAL"] == "SIGTERM"
    assert exec_form(last["ENTRYPOINT"]) == ["gateway"]
    cmd = exec_form(last["CMD"])
    assert cmd[0] == "serve"
    port = bind_port(cmd)
    assert str(port) in last["EXPOSE"].split()

    healthcheck = last["HEALTHCHECK"]
    _options, _, probe = healthcheck.partition("CMD ")
    code = python_probe(exec_form(probe))
    assert f"127.0.0.1:{port}/healthz" in code, "the health check asks /healthz on the port CMD binds"

    for ins, args in instructions:
        if ins == "COPY" and "--from" not in args:
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the project (the context is its root)"


# --- compose ---------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_compose_runs_two_gateways_on_one_redis_behind_nginx() -> None:
    services, gateways = compose_services(), compose_gateways()
    assert len(gateways) == 2, f"expected two gateway services built from the Dockerfile, got {sorted(gateways)}"
    envs = {name: {k: interpolate(str(v)) for k, v in s["environment"].items()} for name, s in gateways.items()}

    bus_urls = {env["GATEWAY_BUS_URL"] for env in envs.values()}
    assert len(bus_urls) == 1, f"the gateways must share one bus: {bus_urls}"
    (bus_url,) = bus_urls
    redis_host = re.fullmatch(r"redis://([\w.-]+):6379/\d+(\?.*)?", bus_url)
    assert redis_host, bus_url
    redis = services[redis_host[1]]
    assert redis["image"].startswith("redis:")
    assert "--appendonly yes" in " ".join(redis["command"]), "Redis must persist the bus (appendonly yes)"
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])

    (subnet,) = (ipaddress.ip_network(c["subnet"]) for n in load_yaml(COMPOSE)[0]["networks"].values()
                 for c in n["ipam"]["config"])
    dockerfile_port = bind_port(exec_form(dict(dockerfile_instructions())["CMD"]))
    for name, service in gateways.items():
        assert service["depends_on"][redis_host[1]]["condition"] == "service_healthy"
        probe = service["healthcheck"]["test"]
        assert probe[0] == "CMD"
        assert f"127.0.0.1:{dockerfile_port}/readyz" in python_probe(probe[1:])
        grace = seconds(service["stop_grace_period"])
        assert grace > drain_of(envs[name]), f"{name}: stop_grace_period {grace} s cuts the drain short"
        trusted = [ipaddress.ip_network(n.strip()) for n in envs[name]["GATEWAY_LIMITS_TRUSTED_PROXIES"].split(",")]
        assert any(subnet[0] in t and subnet[-1] in t for t in trusted), f"{name} does not trust nginx's {subnet}"
        assert "command" not in service, "the gateways listen where the Dockerfile's CMD says"

    nginx = next(s for s in services.values() if str(s.get("image", "")).startswith("nginx"))
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert {n for n, d in nginx["depends_on"].items() if d["condition"] == "service_healthy"} == set(gateways)
    upstreams = re.findall(r"^\s*server\s+([\w.-]+:\d+)", COMPOSE_NGINX.read_text(), flags=re.M)
    assert sorted(upstreams) == sorted(f"{name}:{dockerfile_port}" for name in gateways)


@pytest.mark.unit
def test_compose_tls_overlay_adds_the_tls_server() -> None:
    (overlay,) = load_yaml(COMPOSE_TLS)
    nginx = overlay["services"]["nginx"]
    assert f"./{COMPOSE_NGINX_TLS.name}:/etc/nginx/conf.d/tls.conf:ro" in nginx["volumes"]
    assert "./certs:/etc/gateway:ro" in nginx["volumes"]
    assert "/etc/gateway/cert.pem" in COMPOSE_NGINX_TLS.read_text()


@pytest.mark.live
def test_docker_compose_config() -> None:
    docker = optional_tool("docker")
    if run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("docker has no compose plugin (optional: .ci/run does not install Docker)")
    for files in ([COMPOSE], [COMPOSE, COMPOSE_TLS]):
        args = [a for f in files for a in ("-f", str(f))]
        result = run([docker, "compose", *args, "config", "-q"])
        assert result.returncode == 0, result.stderr


# --- nginx -----------------------------------------------------------------------------------------------------------


def _directives(conf: str, block: str) -> set[str]:
    """The directives inside the first ``block {`` of an nginx file, comments dropped and whitespace normalised."""
    text = re.sub(r"#[^\n]*", "", conf)
    start = text.index(block + " {") + len(block) + 2
    depth, end = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        end += 1
    return {" ".join(d.split()) for d in text[start:end - 1].split(";") if d.strip()}


@pytest.mark.unit
@pytest.mark.parametrize("path", [COMPOSE_NGINX, COMPOSE_NGINX_TLS], ids=lambda p: p.name)
def test_compose_nginx_keeps_the_shipped_proxy_directives(path: Path) -> None:
    shipped, conf = SHIPPED_NGINX.read_text(), path.read_text()
    missing = _directives(shipped, "location /") - _directives(conf, "location /")
    assert not missing, f"{path.name} lost directives of deploy/nginx/gateway.conf: {sorted(missing)}"
    assert "proxy_hide_header Alt-Svc;" in conf
    if path == COMPOSE_NGINX:
        upstream = _directives(conf, "upstream gateway")
        assert {"least_conn", "keepalive 64"} <= upstream


def render_compose_nginx(prefix: Path, certs: tuple[Path, Path], upstreams: list[int]) -> tuple[Path, int, int]:
    """Both compose nginx files in one temporary prefix: service names (which do not resolve here) replaced by
    loopback ports, the listeners on free loopback ports, the certificates the test's."""
    http_port, tls_port = free_port(), free_port()
    conf = COMPOSE_NGINX.read_text()
    servers = iter(upstreams)
    conf, replaced = re.subn(r"server [\w.-]+:\d+", lambda _: f"server 127.0.0.1:{next(servers)}", conf)
    conf, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{http_port};", conf)
    tls = COMPOSE_NGINX_TLS.read_text()
    tls, tls_listens = re.subn(r"listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;", tls)
    tls = tls.replace("/etc/gateway/cert.pem", str(certs[0])).replace("/etc/gateway/key.pem", str(certs[1]))
    assert (replaced, listens, tls_listens) == (len(upstreams), 1, 1), "the compose nginx layout changed"
    (prefix / "gateway.conf").write_text(conf + "\n" + tls)
    user = "user root;" if os.geteuid() == 0 else ""
    main = prefix / "nginx.conf"
    main.write_text(WRAPPER.format(prefix=prefix, user=user))
    return main, http_port, tls_port


@pytest.mark.live
def test_compose_nginx_passes_nginx_t(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    binary = require_binary("nginx")
    main, _, _ = render_compose_nginx(tmp_path, certs, [free_port(), free_port()])
    result = run([binary, "-t", "-p", str(tmp_path), "-c", str(main)])
    assert result.returncode == 0, result.stderr


@pytest.mark.live
def test_compose_nginx_proxies_to_a_gateway(tmp_path: Path, certs: tuple[Path, Path], server: Server) -> None:
    """Both server blocks, run: the gateway answers through them (over h2 on the TLS one)."""
    require_binary("nginx")
    main, http_port, tls_port = render_compose_nginx(tmp_path, certs, [server.http_port, server.http_port])
    with running_nginx(tmp_path, main, http_port):
        plain = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=5)
        assert plain.status_code == 200
        tls_context = ssl.create_default_context(cafile=str(certs[0]))
        with httpx.Client(http2=True, verify=tls_context, timeout=5) as client:
            tls = client.get(f"https://127.0.0.1:{tls_port}/healthz")
        assert tls.status_code == 200
        assert tls.http_version == "HTTP/2"
        assert "alt-svc" not in tls.headers


# --- the health checks, run against a gateway ------------------------------------------------------------------------


@pytest.mark.live
def test_container_health_checks_run_against_a_gateway(server: Server) -> None:
    """The Dockerfile's /healthz and compose's /readyz one-liners: 0 against a live gateway, not 0 without one."""
    dockerfile_hc = exec_form(dict(dockerfile_instructions())["HEALTHCHECK"].partition("CMD ")[2])
    probes = [python_probe(dockerfile_hc)]
    probes += [python_probe(s["healthcheck"]["test"][1:]) for s in compose_gateways().values()]
    closed = free_port()
    for code in probes:
        live = code.replace("127.0.0.1:8000", f"127.0.0.1:{server.http_port}")
        dead = code.replace("127.0.0.1:8000", f"127.0.0.1:{closed}")
        assert live != code, "the probe no longer targets 127.0.0.1:8000: update this test"
        assert run([sys.executable, "-c", live]).returncode == 0
        assert run([sys.executable, "-c", dead]).returncode != 0


# --- Kubernetes ------------------------------------------------------------------------------------------------------


def _pod_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(only(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _prestop_sleep(hook: dict[str, Any]) -> float:
    if "sleep" in hook:  # the native sleep action
        return float(hook["sleep"]["seconds"])
    words = " ".join(hook["exec"]["command"])
    found = re.search(r"\bsleep (\d+(?:\.\d+)?)\b", words)
    assert found, f"the preStop hook should sleep: {words}"
    return float(found[1])


@pytest.mark.unit
def test_k8s_deployment_probes_and_termination() -> None:
    objects = k8s_objects()
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    port = bind_port(container["args"])
    assert port in ports.values()

    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must ask {path}"
        assert ports.get(get["port"], get["port"]) == port

    env = _pod_env(objects, container)
    sleep = _prestop_sleep(container["lifecycle"]["preStop"])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > drain_of(env) + sleep, f"terminationGracePeriodSeconds {grace} <= drain {drain_of(env)} + {sleep}"

    assert env["GATEWAY_BUS_URL"].startswith("redis://")
    token = next(e for e in container["env"] if e["name"] == "GATEWAY_HUB_PUBLISH_TOKEN")
    assert "secretKeyRef" in token["valueFrom"], "the publish token comes from a Secret"

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(container["resources"])


@pytest.mark.unit
def test_k8s_service_pdb_and_ingress_select_the_gateway_pods() -> None:
    objects = k8s_objects()
    deployment = only(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}

    service = only(objects, "Service", deployment["metadata"]["name"])
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    replicas = deployment["spec"]["replicas"]
    allowed = pdb["spec"].get("maxUnavailable", replicas - pdb["spec"].get("minAvailable", replicas))
    assert 1 <= allowed < replicas, "a node drain may take one gateway, never all of them"

    ingress = only(objects, "Ingress")
    backends = [p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    service_ports = {p.get("name") for p in service["spec"]["ports"]} | {p["port"] for p in service["spec"]["ports"]}
    for backend in backends:
        assert backend["name"] == service["metadata"]["name"]
        assert next(iter(backend["port"].values())) in service_ports
    notes = {k.removeprefix("nginx.ingress.kubernetes.io/"): v for k, v in ingress["metadata"]["annotations"].items()}
    assert notes["proxy-buffering"] == "off"
    assert notes["proxy-request-buffering"] == "off"
    assert notes["proxy-http-version"] == "1.1"
    assert int(notes["proxy-read-timeout"]) >= 3 * HEARTBEAT, "the read timeout must outlast several heartbeats"
    assert int(notes["proxy-send-timeout"]) >= 3 * HEARTBEAT


@pytest.mark.unit
def test_k8s_redis_persists_and_is_the_bus() -> None:
    objects = k8s_objects()
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    host = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+(\?.*)?", _pod_env(objects, container)["GATEWAY_BUS_URL"])
    assert host, "GATEWAY_BUS_URL must be a redis:// URL"
    service = only(objects, "Service", host[1])
    redis = only(objects, "StatefulSet", host[1])
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert int(host[2]) in {p["port"] for p in service["spec"]["ports"]}
    (rc,) = redis["spec"]["template"]["spec"]["containers"]
    args = " ".join(rc.get("command", []) + rc.get("args", []))
    assert "--appendonly yes" in args
    data_dir = re.search(r"--dir (\S+)", args)
    assert data_dir, "name the data directory, on the persistent volume"
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert any(m["name"] in claims and m["mountPath"] == data_dir[1] for m in rc["volumeMounts"])


@pytest.mark.unit
def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.live
def test_kubectl_kustomize_builds() -> None:
    kubectl = optional_tool("kubectl")
    result = run([kubectl, "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr


# --- settings --------------------------------------------------------------------------------------------------------


def _settings_sources() -> dict[str, Callable[[], dict[str, str]]]:
    return {
        "systemd-env-example": lambda: env_file(ENV_EXAMPLE),
        "compose": lambda: {k: interpolate(str(v)) for s in compose_gateways().values()
                            for k, v in s["environment"].items()},
        "k8s-configmap": lambda: only(k8s_objects(), "ConfigMap")["data"],
    }


@pytest.mark.live
@pytest.mark.parametrize("source", list(_settings_sources()))
def test_settings_pass_gateway_check(source: str) -> None:
    env = _settings_sources()[source]()
    result = gateway_check(env)
    assert result.returncode == 0, f"gateway check refused {source}'s settings: {result.stderr}"
    assert f'url = "{env["GATEWAY_BUS_URL"]}"' in result.stdout
