"""`fil-heartbeat-aggregator alert-test` as a real process against the local fakes: one
test notification to every receiver (Alertmanager, Slack, Discord, Telegram, PagerDuty),
one line per receiver, exit 0 when all took it, 1 when one did not, 2 for a bad setting.
Secrets come from a file and an environment variable and never reach the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.fake_receivers import (
    FakeAlertmanager,
    FakeDiscord,
    FakePagerDuty,
    FakeSlack,
    FakeTelegram,
    serving,
)
from tests.promservers import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

TOKEN = "123456:TEST-token_abc"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
SLACK_SECRET = "XXXXsecretXXXX"


def _config(tmp: Path, am: str, slack: str, discord: str, telegram: str, pd: str) -> Path:
    (tmp / "telegram.token").write_text(TOKEN + "\n")
    path = tmp / "aggregator.toml"
    path.write_text(
        f'runbook_base_url = "https://github.com/example/fil-heartbeat/blob/main"\n'
        f"[alerts]\n"
        f'alertmanager_urls = ["{am}"]\n'
        f"[[alerts.receivers]]\n"
        f'type = "slack"\n'
        f'url = "https://hooks.slack.com/services/T0001/B0001/{SLACK_SECRET}"\n'
        f'base_url = "{slack}"\n'
        f"[[alerts.receivers]]\n"
        f'type = "discord"\n'
        f'url = "https://discord.com/api/webhooks/1234567890/s3cr3t-token"\n'
        f'base_url = "{discord}"\n'
        f"[[alerts.receivers]]\n"
        f'type = "telegram"\n'
        f'bot_token_file = "{tmp / "telegram.token"}"\n'
        f"chat_id = -1001234567890\n"
        f'base_url = "{telegram}"\n'
        f"[[alerts.receivers]]\n"
        f'type = "pagerduty"\n'
        f'routing_key_env = "TEST_PD_ROUTING_KEY"\n'
        f'base_url = "{pd}"\n'
    )
    return path


async def _alert_test(config: Path, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "TEST_PD_ROUTING_KEY": ROUTING_KEY}
    args = [
        sys.executable, "-m", "aggregator", "alert-test",
        "--config", str(config),
    ]  # fmt: skip
    with trio.fail_after(60):
        return await trio.run_process(args, env=env, cwd=REPO, capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip


async def test_alert_test_reaches_every_receiver_then_reports_a_failure(tmp_path: Path) -> None:
    fakes = am, slack, discord, telegram, pd = (
        FakeAlertmanager(),
        FakeSlack(),
        FakeDiscord(),
        FakeTelegram(),
        FakePagerDuty(),
    )
    async with serving(*fakes) as urls:
        config = _config(tmp_path, *urls)
        done = await _alert_test(config, tmp_path)
        out = done.stdout.decode()
        assert done.returncode == 0, (out, done.stderr.decode())
        lines = out.splitlines()
        assert [line.split()[:2] for line in lines[:-1]] == [
            ["ok", "alertmanager"],
            ["ok", "slack"],
            ["ok", "discord"],
            ["ok", "telegram"],
            ["ok", "pagerduty"],
        ]
        assert lines[-1] == "5 of 5 receivers took the test notification"
        assert [len(f.accepted) for f in fakes] == [1, 1, 1, 1, 2]  # PagerDuty: and resolve
        assert all(f.rejected == [] for f in fakes)
        (alert,) = am.accepted[0]
        assert alert["labels"]["alertname"] == "FilHeartbeatTestAlert"
        assert "endsAt" in alert  # it resolves by itself
        assert "TEST" in slack.accepted[0]["text"]
        assert pd.accepted[0]["routing_key"] == ROUTING_KEY
        everything = out + done.stderr.decode()
        for secret in (TOKEN, ROUTING_KEY, SLACK_SECRET, "s3cr3t-token"):
            assert secret not in everything

        telegram.fail(401)  # a revoked token
        discord.fail(404)  # a deleted webhook (Discord: 404 Unknown Webhook)
        done = await _alert_test(config, tmp_path)
        out = done.stdout.decode()
        assert done.returncode == 1, out
        status = {line.split()[1]: line.split()[0] for line in out.splitlines()[:-1]}
        assert status == {
            "alertmanager": "ok",
            "slack": "ok",
            "discord": "FAIL",
            "telegram": "FAIL",
            "pagerduty": "ok",
        }
        assert out.splitlines()[-1] == "3 of 5 receivers took the test notification"
        assert TOKEN not in out + done.stderr.decode()


async def test_alert_test_names_a_bad_receiver_setting(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[alerts]\n[[alerts.receivers]]\ntype = "telegram"\nbot_token = "123:abc"\n')
    done = await _alert_test(config, tmp_path)
    assert done.returncode == 2
    assert "alerts.receivers[0].chat_id" in done.stderr.decode()
    assert "123:abc" not in done.stderr.decode()


async def test_alert_test_without_receivers_is_a_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "none.toml"
    config.write_text("[alerts]\n")
    done = await _alert_test(config, tmp_path)
    assert done.returncode == 2
    assert "no alert receiver configured" in done.stderr.decode()
