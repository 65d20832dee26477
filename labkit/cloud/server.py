"""The cloud's process: bind a loopback port, write clouds.yaml and cloud.json, serve.

Started by `labkit cloud up` as `python -m labkit.cloud.server HOME`; reads
HOME/settings.json. It removes cloud.json when it stops.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import uvicorn
import yaml

from labkit.cloud.app import Cloud, build_app, next_boot
from labkit.cloud.identity.bootstrap import clouds_yaml
from labkit.cloud.settings import CloudSettings


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1: the asked-for port if free, else any free one."""
    for candidate in ([port] if port else []) + [0]:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it Nagle and delayed ACKs add 40 ms to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", candidate))
        except OSError:
            sock.close()
            continue
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
    raise OSError("no free port on 127.0.0.1")


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def serve(home: Path) -> None:
    settings = CloudSettings.from_json((home / "settings.json").read_text())
    sock = bind(settings.port)
    port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    # keep the port, so clouds.yaml and catalog URLs stay the same across restarts
    settings = settings.with_port(port)
    (home / "settings.json").write_text(settings.to_json())

    cloud = Cloud(settings, base_url, boot=next_boot(home))
    write_private(home / "clouds.yaml", yaml.safe_dump(clouds_yaml(settings.lab, base_url),
                                                        sort_keys=False))
    state_file = home / "cloud.json"
    app = build_app(cloud, on_stop=lambda: state_file.unlink(missing_ok=True))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    state = {"pid": os.getpid(), "port": port, "url": base_url, "started_at": time.time()}
    state_file.write_text(json.dumps(state))
    server.run(sockets=[sock])  # uvicorn picks its event loop (uvloop when installed)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
