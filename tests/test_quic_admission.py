"""The sans-IO QUIC admission rules: cap first, then Retry, then admit (``gateway.core.quic_admission``)."""

from __future__ import annotations

import pytest

from gateway.core.quic_admission import QuicAdmission, RetryMode, Verdict

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("retry", "has_token", "verdict"), [
    (RetryMode.ALWAYS, False, Verdict.RETRY),
    (RetryMode.ALWAYS, True, Verdict.VALIDATE),
    (RetryMode.NEVER, False, Verdict.ADMIT),
    (RetryMode.NEVER, True, Verdict.ADMIT),
])
def test_under_the_cap_the_retry_mode_decides(retry: RetryMode, has_token: bool, verdict: Verdict) -> None:
    assert QuicAdmission(retry, max_connections=2).verdict(has_token) is verdict


@pytest.mark.parametrize("retry", list(RetryMode))
def test_at_the_cap_every_initial_is_refused_before_any_retry(retry: RetryMode) -> None:
    admission = QuicAdmission(retry, max_connections=2)
    admission.opened()
    admission.opened()
    assert admission.verdict(has_token=False) is Verdict.REFUSE
    assert admission.verdict(has_token=True) is Verdict.REFUSE
    admission.closed()
    assert admission.verdict(has_token=True) is not Verdict.REFUSE


def test_zero_disables_the_cap() -> None:
    admission = QuicAdmission(RetryMode.NEVER, max_connections=0)
    for _ in range(100):
        admission.opened()
    assert admission.verdict(has_token=False) is Verdict.ADMIT


def test_a_close_never_opened_and_a_negative_cap_are_errors() -> None:
    with pytest.raises(RuntimeError, match="never counted"):
        QuicAdmission().closed()
    with pytest.raises(ValueError, match="max_connections"):
        QuicAdmission(max_connections=-1)
