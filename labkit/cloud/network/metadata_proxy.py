"""Neutron's metadata proxy for one guest connection: HTTP on stdin, HTTP back on stdout.

In neutron, a guest's request to 169.254.169.254 reaches haproxy in the router's (or
the DHCP server's) namespace, then the metadata agent, which finds the instance behind
the guest's address and forwards the request to nova-api-metadata with the
instance's identity in three headers: X-Instance-ID, X-Tenant-ID and
X-Instance-ID-Signature, the hex HMAC-SHA256 of the instance id keyed with the
secret neutron and nova share (metadata_proxy_shared_secret).

Here qemu's user-mode network does haproxy's part: `guestfwd=tcp:<meta-ip>:80-cmd:...`
starts this script for each connection the guest opens to the metadata address, with
the instance's identity on its command line, so no address lookup is needed. The
script reads one request, forwards it as the agent does, answers as the agent does
(a 200 passes through with its content type; refusals become webob's error pages;
an unreachable nova is a 503), and exits, which closes the guest's connection.

Standard library only, and no labkit import at module level: qemu runs it with
`python -S` for every connection, so it must start fast and without site-packages.
The nova side imports `webob_error` from here, so both answer errors in one format.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import http.client
import json
import os
import signal
import sys
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pathlib import Path

USER_AGENT = "labkit-service/neutron-metadata-agent"  # the cloud's trace names the caller
NOVA_TIMEOUT = 60  # seconds, the agent's timeout for nova's answer
GUARD_SECONDS = 120  # a guest that opens a connection and never finishes its request
MAX_LINE = 65536
MAX_HEADERS = 100
MAX_BODY = 1 << 20

# webob's titles and default explanations for the codes a metadata request can meet
WEBOB_ERRORS = {
    400: ("Bad Request", "The server could not comply with the request since it is either "
                         "malformed or otherwise incorrect."),
    403: ("Forbidden", "Access was denied to this resource."),
    404: ("Not Found", "The resource could not be found."),
    409: ("Conflict", "There was a conflict when trying to complete your request."),
    411: ("Length Required", "Content-Length header required."),
    500: ("Internal Server Error", "The server has either erred or is incapable of "
                                   "performing the requested operation."),
    502: ("Bad Gateway", "Bad gateway."),
    503: ("Service Unavailable", "The server is currently unavailable. Please try again at "
                                 "a later time."),
    504: ("Gateway Timeout", "The gateway has timed out."),
}
# what the agent says itself (neutron's proxy_base), and the codes it passes on bare
UNAVAILABLE = ("The remote metadata server is temporarily unavailable. Please try again "
               "later.")
REMOTE_ERROR = "Remote metadata server experienced an internal server error."
UNKNOWN_ERROR = "An unknown error has occurred. Please try your request again."
PASSED_ON = (400, 404, 409, 502, 503, 504)


class BadRequest(Exception):
    """The guest sent something that is not an HTTP/1.x request."""


class _Refusal(Exception):
    """A request this proxy declines with an error page of its own (e.g. 411)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# -- webob's error pages ----------------------------------------------------------------------

def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    """The q the most specific matching media range gives `offer` (0 if none matches)."""
    kind = offer.split("/")[0] + "/*"
    for candidate in (offer, kind, "*/*"):
        found = [q for media, q in ranges if media == candidate]
        if found:
            return found[0]
    return 0.0


def negotiate(accept: str | None) -> str:
    """The error page format webob picks for this Accept header: text/html or
    application/json when acceptable (HTML first on a tie, so `*/*` gets HTML), else
    text/plain, which is also what a request with no Accept header gets."""
    if not accept:
        return "text/plain"
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    best, best_q = "text/plain", 0.0
    for offer in ("text/html", "application/json"):
        q = _quality(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


def webob_error(code: int, accept: str | None = None,
                explanation: str | None = None) -> tuple[str, bytes]:
    """(content type, body) of the error page webob makes for `code`, in the format the
    Accept header asks for; `explanation` replaces webob's default sentence, as nova's
    and neutron's handlers do."""
    title, default = WEBOB_ERRORS.get(code, WEBOB_ERRORS[500])
    status = f"{code} {title}"
    said = " ".join((explanation or default).split())
    chosen = negotiate(accept)
    if chosen == "text/html":
        body = (f"<html>\n <head>\n  <title>{status}</title>\n </head>\n <body>\n"
                f"  <h1>{status}</h1>\n  {html.escape(said)}<br /><br />\n\n\n\n"
                f" </body>\n</html>")
        return "text/html; charset=UTF-8", body.encode()
    if chosen == "application/json":
        message = {"message": f"{said}<br /><br />\n\n\n", "code": status, "title": title}
        return "application/json", json.dumps(message).encode()
    return "text/plain; charset=UTF-8", f"{status}\n\n{said}\n\n   ".encode()


# -- one request in, one answer out -----------------------------------------------------------

def sign(secret: bytes, instance_id: str) -> str:
    """X-Instance-ID-Signature: hex HMAC-SHA256 of the instance id, keyed with the secret."""
    return hmac.new(secret, instance_id.encode(), hashlib.sha256).hexdigest()


def _line(stream: IO[bytes]) -> bytes:
    line = stream.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise BadRequest("line too long")
    return line


def read_request(stream: IO[bytes]) -> tuple[str, str, dict[str, str], bytes] | None:
    """(method, target, headers by lower-case name, body) of the next request on `stream`;
    None if the guest closed the connection before sending one."""
    line = _line(stream)
    while line in (b"\r\n", b"\n"):  # tolerate blank lines before the request line
        line = _line(stream)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {line[:80]!r}")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(stream)
        if line in (b"\r\n", b"\n", b""):
            break
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise BadRequest(f"not a header: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise BadRequest("too many headers")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _Refusal(411)
    try:
        length = int(headers.get("content-length", "0") or "0")
    except ValueError as exc:
        raise BadRequest("bad Content-Length") from exc
    if length < 0 or length > MAX_BODY:
        raise BadRequest("bad Content-Length")
    body = stream.read(length) if length else b""
    return method.upper(), target, headers, body


def forward(url: str, secret: bytes, instance_id: str, project_id: str, method: str,
            target: str, body: bytes) -> tuple[int, str, bytes]:
    """Send the request to nova-api-metadata at `url` with the instance's signed identity;
    (status, content type, body) from nova. OSError when nova cannot be reached."""
    base = urlsplit(url)
    asked = urlsplit(target)  # a proxy-style absolute target, or a plain path
    path = base.path.rstrip("/") + "/" + asked.path.lstrip("/")
    if asked.query:
        path += "?" + asked.query
    conn_class = http.client.HTTPSConnection if base.scheme == "https" else \
        http.client.HTTPConnection
    conn = conn_class(base.hostname or "127.0.0.1", base.port, timeout=NOVA_TIMEOUT)
    headers = {"X-Instance-ID": instance_id, "X-Tenant-ID": project_id,
               "X-Instance-ID-Signature": sign(secret, instance_id), "User-Agent": USER_AGENT}
    try:
        conn.request(method, path, body=body if body or method in ("POST", "PUT") else None,
                     headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, response.getheader("Content-Type", "text/plain"), data
    finally:
        conn.close()


def answer(url: str, secret: bytes, instance_id: str, project_id: str, method: str,
           target: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    """What the metadata agent answers the guest: nova's 200 as it is; nova's refusals
    as webob's plain pages; nova unreachable as 503."""
    accept = headers.get("accept")
    try:
        status, content_type, data = forward(url, secret, instance_id, project_id, method,
                                             target, body)
    except (OSError, http.client.HTTPException) as exc:
        print(f"metadata proxy: nova-api-metadata at {url} unreachable: {exc}", file=sys.stderr)
        return (503, *webob_error(503, accept, UNAVAILABLE))
    if status == 200:
        return status, content_type, data
    if status == 403:
        print("metadata proxy: nova refused the signature (is the shared secret the same?)",
              file=sys.stderr)
        return (403, *webob_error(403, accept))
    if status == 500:
        return (500, *webob_error(500, accept, REMOTE_ERROR))
    if status in PASSED_ON:
        return (status, *webob_error(status, accept))
    print(f"metadata proxy: unexpected response code {status}", file=sys.stderr)
    return (500, *webob_error(500, accept, UNKNOWN_ERROR))


def write_response(out: IO[bytes], status: int, content_type: str, body: bytes,
                   head: bool = False) -> None:
    reason = http.client.responses.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head:
        out.write(body)
    out.flush()


def serve_one(stdin: IO[bytes], stdout: IO[bytes], url: str, secret_file: str,
              instance_id: str, project_id: str) -> int:
    """Read one request from `stdin`, answer it on `stdout`; the exit status."""
    try:
        request = read_request(stdin)
    except BadRequest as exc:
        print(f"metadata proxy: {exc}", file=sys.stderr)
        write_response(stdout, 400, *webob_error(400))
        return 1
    except _Refusal as refusal:
        write_response(stdout, refusal.code, *webob_error(refusal.code))
        return 1
    if request is None:
        return 0
    method, target, headers, body = request
    try:
        with open(secret_file, "rb") as f:
            secret = f.read().strip()
    except OSError as exc:
        print(f"metadata proxy: cannot read the shared secret: {exc}", file=sys.stderr)
        write_response(stdout, 500, *webob_error(500, headers.get("accept"), UNKNOWN_ERROR))
        return 1
    status, content_type, data = answer(url, secret, instance_id, project_id, method, target,
                                        headers, body)
    write_response(stdout, status, content_type, data, head=method == "HEAD")
    return 0


def proxy_command(base_url: str, secret_file: Path, instance_id: str, project_id: str) -> str:
    """The shell command qemu's guestfwd runs (with /bin/sh -c) for each connection.

    ValueError if any part holds a comma: qemu's option parser would cut the command
    there (it ends the guestfwd option)."""
    import shlex

    parts = [sys.executable, "-S", os.path.abspath(__file__), "--url", base_url,
             "--instance", instance_id, "--project", project_id,
             "--secret-file", str(secret_file)]
    for part in parts:
        if "," in part:
            raise ValueError(f"{part!r} holds a comma, which qemu's -netdev option parser "
                             f"would take as the end of the guestfwd command")
    return " ".join(shlex.quote(part) for part in parts)


def _arguments(argv: list[str]) -> dict[str, str]:
    """--url, --instance, --project and --secret-file, each followed by its value."""
    wanted = {"--url", "--instance", "--project", "--secret-file"}
    found: dict[str, str] = {}
    rest = list(argv)
    while rest:
        flag = rest.pop(0)
        if flag not in wanted or not rest:
            raise SystemExit(f"usage: metadata_proxy.py --url URL --instance UUID "
                             f"--project ID --secret-file PATH (bad argument {flag!r})")
        found[flag[2:]] = rest.pop(0)
    missing = sorted(w for w in wanted if w[2:] not in found)
    if missing:
        raise SystemExit(f"metadata_proxy.py: missing {' '.join(missing)}")
    return found


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    if hasattr(signal, "SIGALRM"):
        signal.alarm(GUARD_SECONDS)
    return serve_one(sys.stdin.buffer, sys.stdout.buffer, args["url"], args["secret-file"],
                     args["instance"], args["project"])


if __name__ == "__main__":
    sys.exit(main())
