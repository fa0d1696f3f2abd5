"""One real jaxsgl server on 127.0.0.1 (tests/server/harness.py) and every backend pointed at it.

`Served.local` runs programs in process on the very engine the server serves, so a program's
results through `RuntimeEndpoint` and `OpenAI` can be compared with the in-process ones exactly.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))  # harness.py

from harness import ENGINE_OPTS, InProcessServer, assert_no_leaked_pages, make_tiny_model  # noqa: E402

import jaxsgl as sgl  # noqa: E402
from jaxsgl.lang import RuntimeBackend  # noqa: E402

__all__ = ["Served", "assert_no_leaked_pages", "make_tiny_model", "start_served"]


@dataclass
class Served:
    server: Any
    engine: Any
    local: RuntimeBackend
    endpoint: Any  # sgl.RuntimeEndpoint
    completion: Any  # sgl.OpenAI, completion model (/v1/completions)
    chat: Any  # sgl.OpenAI, chat model (/v1/chat/completions)
    name: str

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        for be in (self.endpoint,):
            be.shutdown()
        self.server.stop()
        self.engine.shutdown()


def start_served(model_dir: Path, name: str, **engine_options: Any) -> Served:
    """Engine + in-process server + the three HTTP backends (bounded waits: 120 s to come up)."""
    from jaxsgl.engine.engine import Engine

    engine = Engine(str(model_dir), **{**ENGINE_OPTS, **engine_options})
    server = InProcessServer(engine, model_path=str(model_dir), served_model_name=name).start(timeout=120)
    url = server.url
    return Served(server=server, engine=engine, local=RuntimeBackend(engine),
                  endpoint=sgl.RuntimeEndpoint(url, timeout=120),
                  completion=sgl.OpenAI(name, base_url=url + "/v1", is_chat_model=False, chat_template=str(model_dir),
                                        timeout=120),
                  chat=sgl.OpenAI(name, base_url=url + "/v1", chat_template=str(model_dir), timeout=120),
                  name=name)
