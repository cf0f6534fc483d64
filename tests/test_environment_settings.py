"""``GATEWAY_*`` environment variables: a misspelt setting is refused with the nearest name; the few variables the
gateway's own tools use for something else pass."""

from __future__ import annotations

import pytest

from gateway.config import ENV_NOT_SETTINGS, Settings
from gateway.core.errors import SettingsError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("GATEWAY_SSE_HEARTBEET", "GATEWAY_SSE_HEARTBEAT"),
        ("GATEWAY_SERVER_CERT", "GATEWAY_SERVER_CERTFILE"),
        ("GATEWAY_BUS", "GATEWAY_BUS_URL"),
        ("GATEWAY_HUB_PUBLISH_TOKENS", "GATEWAY_HUB_PUBLISH_TOKEN"),
        ("GATEWAY_SERVER_ACCEPT_UNVERIFIED", "GATEWAY_SERVER_ACCEPT_UNVERIFIED_SERVER"),
    ],
)
def test_a_misspelt_setting_is_refused_with_the_nearest_name(name: str, nearest: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.load(environ={name: "3"})
    message = str(refused.value)
    assert name in message
    assert f"did you mean {nearest}?" in message
    assert "\n" not in message


def test_a_name_like_no_setting_points_to_the_list() -> None:
    with pytest.raises(SettingsError, match=r"GATEWAY_ZZZ='1'.*`gateway config` lists every setting"):
        Settings.load(environ={"GATEWAY_ZZZ": "1"})


@pytest.mark.parametrize("name", [*sorted(ENV_NOT_SETTINGS), "GATEWAY_TEST_STRICT", "GATEWAY_TEST_REDIS_URL",
                                  "GATEWAY_LOAD_STREAMS"])
def test_variables_that_are_not_settings_pass(name: str) -> None:
    assert Settings.load(environ={name: "1"}) == Settings()


def test_the_workers_index_and_ci_switch_are_allowed_by_name() -> None:
    assert "GATEWAY_WORKER_INDEX" in ENV_NOT_SETTINGS
    assert Settings.load(environ={"GATEWAY_TEST_STRICT": "1", "GATEWAY_WORKER_INDEX": "3"}) == Settings()


def test_other_variables_and_settings_still_load() -> None:
    s = Settings.load(environ={"PATH": "/bin", "GATEWAYX": "1", "GATEWAY_SSE_HEARTBEAT": "12"})
    assert s.sse.heartbeat == 12.0


def test_a_refused_secret_is_not_printed() -> None:
    """The error line is printed and logged: a secret in it would leak; a key file's path is shown."""
    with pytest.raises(SettingsError) as short:
        Settings.load(environ={"GATEWAY_AUTH_JWT_KEY": "too-short-but-secret"})
    assert "too-short-but-secret" not in str(short.value)
    assert "auth.jwt_key='***'" in str(short.value)
    with pytest.raises(SettingsError) as missing:
        Settings.load(environ={"GATEWAY_AUTH_JWT_KEY": "/nonexistent/key.pem"})
    assert "/nonexistent/key.pem" in str(missing.value)
