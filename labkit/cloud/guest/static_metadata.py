"""A metadata service made of files, for a tiny guest booted by hand (no cloud behind it).

qemu runs it for each connection to the metadata address, as the cloud's guestfwd runs
the metadata proxy: `python -S static_metadata.py <folder>` answers `GET <path>` with the
file <folder>/<path>, else 404. Standard library only, so it starts fast. The benchmarks'
bare boot and the driver's tests use it; the cloud never does.
"""

import os
import sys


def main(root: str) -> None:
    root = os.path.realpath(root)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    line = inp.readline().decode("latin-1")
    while inp.readline() not in (b"\r\n", b"\n", b""):
        pass  # the headers: nothing here depends on them
    parts = line.split()
    path = parts[1] if len(parts) > 1 else "/"
    target = os.path.realpath(os.path.join(root, path.lstrip("/")))
    if target.startswith(root + os.sep) and os.path.isfile(target):
        status, body = "200 OK", open(target, "rb").read()  # noqa: SIM115 - exits right after
    else:
        status, body = "404 Not Found", b"not found\n"
    out.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1])
