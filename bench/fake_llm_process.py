"""The fake streaming LLM in a process of its own, so that it does not share an interpreter lock
with the load generator measuring the relay (`python -m bench.fake_llm_process PORT_FILE`)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from bench.phases import relay_responder
from tests.fakes.fake_llm import FakeLLM


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeLLM(responder=relay_responder) as llm:
        Path(sys.argv[1]).write_text(llm.base_url)
        stop.wait()


if __name__ == "__main__":
    main()
