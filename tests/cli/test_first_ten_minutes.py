"""README "First ten minutes", steps 2 and 3, run as written against a started server.

The commands run in bash from a directory laid out like a clone after `make dev` (the Makefile,
.venv and app/ of this checkout, and a .data/ with the demo tenant's key and id and the settings
`make dev` keeps), with a bare environment: the CLI must find everything itself. The only change
to the text is the address (the test's server listens on an ephemeral port, not :8000).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.cli import main
from app.config.development import write_development_settings
from tests.cli.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def readme_steps() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## First ten minutes", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert blocks[0].strip() == "make dev", "step 1 starts the server"
    return blocks[1:]


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's commands use curl")
def test_the_first_ten_minutes_as_the_readme_writes_them(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("Makefile", ".venv", "app", "requirements.txt", "requirements-dev.txt"):
        (tmp_path / name).symlink_to(ROOT / name)
    data = tmp_path / ".data"
    assert main(["seed-demo", "--key-file", str(data / "demo-api-key")]) == 0
    capsys.readouterr()
    write_development_settings(
        {
            "APP_ENV": "development",
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "ADMIN_API_KEY": os.environ["ADMIN_API_KEY"],
            "PUBLIC_BASE_URL": server.url,
            "TWILIO_ACCOUNT_SID": os.environ["TWILIO_ACCOUNT_SID"],
            "TWILIO_AUTH_TOKEN": os.environ["TWILIO_AUTH_TOKEN"],
        },
        data / "dev.env",
    )
    address = server.url.removeprefix("http://")
    script = "set -euo pipefail\n" + "\n".join(readme_steps()).replace("localhost:8000", address)

    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        input="Hello, is anyone there?\n/hangup\n",  # the caller at the keyboard of step 3
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert '"number":"+14155550100"' in out and '"name":"Receptionist"' in out
    assert out.count("\nagent: Hello, Acme Dental, how can I help?\n") == 2  # the greeting
    assert "you: Hello, is anyone there?" in out and "you: Hi, can I book a cleaning?" in out
    assert "hint: the server has no LLM" in out
    assert len(re.findall(r"Call \S+: completed", out)) == 2
