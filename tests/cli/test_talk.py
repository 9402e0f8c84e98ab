"""`python -m app.cli talk`: a caller typing to the agent of a running server, as Twilio carries it."""

from __future__ import annotations

import io
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.cli import main
from app.config.database import transaction
from app.models import Call, CallTurn
from tests.cli.conftest import LiveServer
from tests.fakes.fake_llm import FakeLLM, Script
from tests.helpers import TenantFixture, create_number_and_profile


class Keyboard:
    """stdin of a terminal: lines arrive when the test types them."""

    def __init__(self) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()

    def isatty(self) -> bool:
        return True

    def type(self, line: str | None) -> None:
        self.lines.put(None if line is None else line + "\n")

    def __iter__(self) -> Iterator[str]:
        while (line := self.lines.get()) is not None:
            yield line


def eventually(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
    return result


def talk(
    monkeypatch: pytest.MonkeyPatch, stdin: Any, *args: str
) -> tuple[int, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return main(["talk", *args]), out, err


def stored(tenant_id: uuid.UUID) -> tuple[Call, list[CallTurn]]:
    with transaction(tenant_id) as session:
        call = session.query(Call).filter_by(tenant_id=tenant_id).one()
        turns = session.query(CallTurn).filter_by(call_id=call.id).order_by(CallTurn.seq).all()
        return call, turns


def test_a_scripted_caller_talks_presses_keys_and_the_agent_hangs_up(
    client: TestClient,
    llm: FakeLLM,
    tenant: TenantFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = create_number_and_profile(tenant.id, greeting="Acme Dental, hello!")
    webhook = client.post(
        f"/api/v1/tenants/{tenant.id}/webhooks",
        json={"url": "http://127.0.0.1:9/hooks"},
        headers=tenant.headers,
    )
    assert webhook.status_code == 201, webhook.text
    llm.push(
        Script(tokens=["Sure", ", when", " suits you?"]),
        Script(tokens=["Noted", ": 4#."]),
        Script(tokens=["Goodbye", "!"], tool_call=("end_call", {})),
    )
    script = io.StringIO("I need a cleaning\n/dtmf 4#\nThat's all, bye\nnever said\n")

    code, out, err = talk(monkeypatch, script, "--number", setup.number)

    assert (code, err.getvalue()) == (0, "")
    text = out.getvalue()
    assert "agent: Acme Dental, hello!\n" in text
    assert "you: I need a cleaning\nagent: Sure, when suits you?\n" in text
    assert "you pressed: 4#\nagent: Noted: 4#.\n" in text
    assert "[the agent ended the call: end_call]" in text and "never said" not in text
    # The digits reached the model as text; the call is reported as the API shows it.
    assert any("4#" in str(m["content"]) for m in llm.requests[1]["messages"])
    call, turns = stored(tenant.id)
    assert call.status == "completed" and call.billable_minutes == 1
    assert f"Call {call.id}: completed, end_reason {call.end_reason}" in text
    assert "caller: I need a cleaning" in text and "agent: Sure, when suits you?" in text
    assert [t.role for t in turns][:3] == ["agent", "caller", "agent"]
    assert "call.started -> http://127.0.0.1:9/hooks" in text
    assert "call.ended -> http://127.0.0.1:9/hooks" in text


def test_typing_while_the_agent_speaks_interrupts_it(
    llm: FakeLLM, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = create_number_and_profile(tenant.id)
    llm.push(
        Script(tokens=["Our opening", " hours are", " nine to five"], stall_after_tokens=2),
        Script(tokens=["Tuesday", " works."]),
    )
    keyboard = Keyboard()
    keyboard.type("When are you open?")
    outcome: queue.Queue[tuple[int, io.StringIO, io.StringIO]] = queue.Queue()
    out = io.StringIO()
    monkeypatch.setattr("sys.stdin", keyboard)
    monkeypatch.setattr("sys.stdout", out)

    import threading

    thread = threading.Thread(
        target=lambda: outcome.put((main(["talk", "--number", setup.number]), out, out))
    )
    thread.start()
    eventually(lambda: "agent: Our opening hours are" in out.getvalue())
    keyboard.type("Is Tuesday possible?")
    eventually(lambda: "Tuesday works." in out.getvalue())
    keyboard.type(None)  # Ctrl-D
    thread.join(timeout=15)
    code, _, _ = outcome.get(timeout=1)

    assert code == 0
    assert "agent: Our opening hours are [interrupted]\n" in out.getvalue()
    assert "[you hung up]" in out.getvalue()
    _, turns = stored(tenant.id)
    spoken = [(t.role, t.text, t.interrupted) for t in turns]
    assert ("agent", "Our opening hours are", True) in spoken
    assert ("caller", "Is Tuesday possible?", False) in spoken


def test_without_an_llm_the_caller_hears_the_apology_and_a_hint(
    server: LiveServer, tenant: TenantFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup = create_number_and_profile(tenant.id)
    code, out, _ = talk(monkeypatch, io.StringIO("Hello?\n"), "--number", setup.number)
    assert code == 0
    assert "hint: the server has no LLM" in out.getvalue()
    assert "agent: I'm sorry" in out.getvalue()
    assert "Webhook events: none sent, no endpoint is subscribed" in out.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--number", "+14155550123"], "error: the call to +14155550123 was refused"),
        (
            ["--number", "+14155550123", "--server", "http://127.0.0.1:9"],
            "error: cannot reach the server at http://127.0.0.1:9",
        ),
    ],
)
def test_errors_are_one_line_and_exit_2(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    code, out, err = talk(monkeypatch, io.StringIO(""), *args)
    assert code == 2
    assert err.getvalue().startswith(message) and err.getvalue().count("\n") == 1


@pytest.mark.parametrize(
    "command", [[], ["create-tenant"], ["create-api-key"], ["seed-demo"], ["talk"]]
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: python -m app.cli" in capsys.readouterr().out


def test_a_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["talk"])
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "python -m app.cli talk: error: the following arguments are required: --number "
        "(see --help)\n"
    )
