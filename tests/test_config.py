"""Settings: precedence, strict parsing, one-line errors, and the shipped config file and README kept complete."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import Settings, defaults_markdown, defaults_toml, describe, env_name
from gateway.core.errors import SettingsError
from tests.support.server import ROOT


@pytest.mark.unit
def test_defaults_are_the_embedded_demo() -> None:
    s = Settings.load(environ={})
    assert s.server.bind == "127.0.0.1:8000"
    assert s.server.tls_bind == s.server.quic_bind == "127.0.0.1:8443"
    assert s.server.app == "gateway.demo:app"
    assert s.sse.heartbeat == 15.0
    assert s.sse.heartbeat < 60  # HTTP/3's idle timeout
    assert s.commands.max_body == 64 * 1024
    assert s.compression.encodings[0] == "br"


@pytest.mark.unit
def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text('[sse]\nheartbeat = 10\nretry = 500\n[hub]\npublish_token = "from-file"\n'
                      '[compression]\nencodings = ["gzip", "identity"]\n')
    s = Settings.load(config, environ={"GATEWAY_SSE_HEARTBEAT": "12.5", "GATEWAY_HUB_PUBLISH_TOKEN": "env"},
                      overrides={"sse.heartbeat": (20, "--heartbeat")})
    assert s.sse.heartbeat == 20.0  # flag beats environment beats file
    assert s.hub.publish_token == "env"
    assert s.sse.retry == 500  # from the file
    assert s.compression.encodings == ["gzip", "identity"]
    assert s.commands.workers == 4  # default


@pytest.mark.unit
@pytest.mark.parametrize(
    ("environ", "key", "allowed"),
    [
        ({"GATEWAY_SSE_HEARTBEAT": "90"}, "sse.heartbeat", "from 1 to 55"),
        ({"GATEWAY_SSE_HEARTBEAT": "soon"}, "sse.heartbeat", "must be a number"),
        ({"GATEWAY_SSE_HEARTBEAT": "nan"}, "sse.heartbeat", "must be a number"),
        ({"GATEWAY_COMMANDS_WORKERS": "2.5"}, "commands.workers", "must be an integer"),
        ({"GATEWAY_METRICS_ENABLED": "maybe"}, "metrics.enabled", "true or false"),
        ({"GATEWAY_COMPRESSION_ENCODINGS": "br,lzma"}, "compression.encodings", "drawn from"),
        ({"GATEWAY_SERVER_BIND": "8000"}, "server.bind", "HOST:PORT"),
        ({"GATEWAY_SERVER_LOG_LEVEL": "loud"}, "server.log_level", "one of"),
        ({"GATEWAY_BUS_URL": "kafka://x"}, "bus.url", "memory://"),
        ({"GATEWAY_COMPRESSION_BROTLI_LGWIN": "30"}, "compression.brotli_lgwin", "from 10 to 24"),
    ],
)
def test_bad_values_name_key_value_source_and_what_is_allowed(environ: dict[str, str], key: str,
                                                               allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load(environ=environ)
    message = str(caught.value)
    assert key in message
    assert repr(next(iter(environ.values()))) in message
    assert next(iter(environ)) in message
    assert allowed in message


@pytest.mark.unit
def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text("[sse]\nheartbeet = 3\n")
    with pytest.raises(SettingsError, match=r"sse\.heartbeet"):
        Settings.load(config, environ={})


@pytest.mark.unit
def test_shipped_config_lists_every_setting_with_its_default() -> None:
    shipped = tomllib.loads((ROOT / "config" / "gateway.toml").read_text())
    flat = {f"{section}.{key}": value for section, table in shipped.items() for key, value in table.items()}
    expected = {key: default for key, _kind, default, _help in describe()}
    assert flat == expected
    assert Settings.load(ROOT / "config" / "gateway.toml", environ={}) == Settings()


@pytest.mark.unit
def test_shipped_config_is_the_generated_one() -> None:
    expected = defaults_toml()
    assert (ROOT / "config" / "gateway.toml").read_text() == expected, "run: gateway config > config/gateway.toml"


@pytest.mark.unit
def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key, *_ in describe() if f"`{key}`" not in readme or env_name(key) not in readme]
    assert not missing, f"README settings table lacks {missing}"
    assert defaults_markdown() in readme, "run: gateway config --markdown, and paste it into the README"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.live
def test_check_prints_effective_settings() -> None:
    result = _cli("check", "--config", "config/gateway.toml", "--bind", "127.0.0.1:9999",
                  env={"GATEWAY_HUB_PUBLISH_TOKEN": "secret-value"})
    assert result.returncode == 0, result.stderr
    assert 'bind = "127.0.0.1:9999"' in result.stdout
    assert "secret-value" not in result.stdout  # the token is never printed
    assert "[compression]" in result.stdout


@pytest.mark.live
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["serve", "--bind", "nonsense"], {}, "server.bind='nonsense' (from --bind)"),
        (["serve"], {"GATEWAY_SSE_HEARTBEAT": "0"}, "sse.heartbeat='0' (from GATEWAY_SSE_HEARTBEAT)"),
        (["check", "--config", "does/not/exist.toml"], {}, "does not exist"),
        (["serve", "--app", "no.such.module:app"], {}, "server.app"),
        (["serve", "--app", "gateway.demo:nothing"], {}, "has no attribute"),
    ],
)
def test_invalid_start_is_one_line_and_exit_code_2(args: list[str], env: dict[str, str], expected: str) -> None:
    result = _cli(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    assert expected in lines[0]


@pytest.mark.live
def test_devcert_creates_a_usable_certificate(tmp_path: Path) -> None:
    result = _cli("devcert", "--dir", str(tmp_path / "certs"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "certs" / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "certs" / "key.pem").stat().st_mode & 0o777 == 0o600
    again = _cli("devcert", "--dir", str(tmp_path / "certs"))
    assert "keeping it" in again.stdout
