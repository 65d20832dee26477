"""The `labkit` command: `labkit cloud up|down|status|reset|env`, `labkit image build`,
`labkit fault kinds|list|inject|clear`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from labkit.cloud import process
from labkit.cloud.settings import PACES, VIRT_DRIVERS, CloudSettings
from labkit.paths import cloud_home


def _up(args: argparse.Namespace) -> int:
    settings = CloudSettings.from_env(
        pace=args.pace, deterministic=True if args.deterministic else None, port=args.port,
        virt=args.virt)
    info = process.up(settings)
    print(f"labkit cloud is up at {info.url} (pid {info.pid}), state in {info.home}")
    print('Point the openstack CLI at it with: eval "$(labkit cloud env)"')
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = process.down(cloud_home())
    print("labkit cloud stopped" if stopped else "labkit cloud was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    home = cloud_home()
    info = process.running(home)
    settings_file = home / "settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    if args.json:
        print(json.dumps({"running": info is not None, "home": str(home),
                          "url": info.url if info else None, "pid": info.pid if info else None,
                          "settings": settings}, indent=2))
    elif info is None:
        print(f"labkit cloud is not running (state folder {home})")
    else:
        print(f"labkit cloud is running at {info.url} (pid {info.pid})")
        print(f"  state folder  {home}")
        print(f"  pace          {settings.get('pace')}")
        print(f"  deterministic {settings.get('deterministic')}")
        print(f"  virt          {settings.get('virt', 'auto')} (virt_type "
              f"{settings.get('virt_type', 'auto')})")
        print(f"  clouds.yaml   {info.clouds_yaml} (clouds: labkit, labkit-admin)")
    return 0 if info is not None else 3


def _reset(args: argparse.Namespace) -> int:
    info = process.reset(cloud_home())
    if info:
        print(f"labkit cloud reset to the lab's first state and running at {info.url}")
    else:
        print("labkit cloud state removed; the next `labkit cloud up` starts from the lab's "
              "first state")
    return 0


def _env(args: argparse.Namespace) -> int:
    info = process.running(cloud_home())
    if info is None:
        print("labkit cloud is not running: start it with `labkit cloud up`", file=sys.stderr)
        return 1
    sys.stdout.write(process.env_exports(info))
    return 0


def _image_build(args: argparse.Namespace) -> int:
    # imported here: `labkit cloud ...` needs none of it
    from labkit.cloud.guest import GuestBuildError, build_image

    started = time.monotonic()
    try:
        image = build_image(force=args.force, log=print)
    except GuestBuildError as exc:
        print(f"labkit image build: {exc}", file=sys.stderr)
        return 1
    sizes = image.sizes()
    print(f"labkit-tiny {image.key} ({time.monotonic() - started:.1f} s)")
    print(f"  kernel   {image.kernel}  ({sizes['kernel'] / 1e6:.1f} MB, "
          f"Debian kernel {image.kernel_version})")
    print(f"  ramdisk  {image.ramdisk}  ({sizes['ramdisk'] / 1e6:.1f} MB)")
    print(f"  disk     {image.disk}  ({sizes['disk'] / 2**20:.0f} MiB, blank)")
    print(f"  manifest {image.folder / 'manifest.json'}")
    return 0


# -- `labkit fault ...`: the troubleshooting lab's faults, through the inspection API

def _fault_api(method: str, path: str = "", body: dict | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    """One request to the running cloud's /labkit/v1/faults as labkit-admin."""
    from openstack.config import OpenStackConfig
    from openstack.connection import Connection

    info = process.running(cloud_home())
    if info is None:
        raise process.CloudError("labkit cloud is not running: start it with `labkit cloud up`")
    config = OpenStackConfig(config_files=[str(info.clouds_yaml)], vendor_files=[],
                             load_envvars=False)
    conn = Connection(config=config.get_one(cloud="labkit-admin"))
    try:
        r = conn.session.request(f"{info.url}/labkit/v1/faults{path}", method, json=body,
                                 raise_exc=False)
        return r.status_code, (r.json() if r.content else {})
    finally:
        conn.close()


def _fault_error(status: int, data: dict) -> int:  # type: ignore[type-arg]
    message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
    print(f"labkit fault: {message or status}", file=sys.stderr)
    return 1


def _fault_line(fault: dict) -> str:  # type: ignore[type-arg]
    params = " ".join(f"{k}={v}" for k, v in fault["params"].items() if k != "project_name")
    return f"{fault['id']}  {fault['kind']}  {params}".rstrip()


def _fault_kinds(args: argparse.Namespace) -> int:
    status, data = _fault_api("GET")
    if status != 200:
        return _fault_error(status, data)
    for kind in data["kinds"]:
        params = " ".join(p["name"] + "=" if p["required"] else f"[{p['name']}=]"
                          for p in kind["params"])
        print(f"{kind['kind']} {params}".rstrip())
        print(f"    {kind['description']}")
        print(f"    symptom: {kind['symptom']}")
    return 0


def _fault_list(args: argparse.Namespace) -> int:
    status, data = _fault_api("GET")
    if status != 200:
        return _fault_error(status, data)
    if args.json:
        print(json.dumps(data["faults"], indent=2))
    elif not data["faults"]:
        print("no faults injected")
    for fault in [] if args.json else data["faults"]:
        print(_fault_line(fault))
    return 0


def _fault_inject(args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"labkit fault inject: expected key=value, not {item!r}", file=sys.stderr)
            return 2
        params[key] = value
    status, data = _fault_api("POST", body={"kind": args.kind, **params})
    if status != 201:
        return _fault_error(status, data)
    print(f"injected {_fault_line(data['fault'])}")
    return 0


def _fault_clear(args: argparse.Namespace) -> int:
    status, data = _fault_api("DELETE", f"/{args.id}" if args.id else "")
    if status != 204:
        return _fault_error(status, data)
    print(f"cleared {args.id}" if args.id else "cleared every fault")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="The life of a VM, explorable.")
    sub = p.add_subparsers(dest="group", required=True)
    cloud = sub.add_parser("cloud", help="the embedded cloud")
    cmds = cloud.add_subparsers(dest="command", required=True)
    up = cmds.add_parser("up", help="start it in the background (or reuse the running one)")
    up.add_argument("--pace", choices=PACES, default=None, help="fast for tests, teach for demos")
    up.add_argument("--deterministic", action="store_true", help="seeded ids and tokens")
    up.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: free)")
    up.add_argument("--virt", choices=VIRT_DRIVERS, default=None,
                    help="hypervisor driver: qemu boots real guests, model runs none "
                         "(default: auto, qemu when it and the guest image are here)")
    up.set_defaults(func=_up)
    cmds.add_parser("down", help="stop it and everything it started").set_defaults(func=_down)
    status = cmds.add_parser("status", help="is it running, where, with which settings")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)
    cmds.add_parser("reset", help="back to the lab's first state").set_defaults(func=_reset)
    cmds.add_parser("env", help="shell exports for the openstack CLI").set_defaults(func=_env)
    image = sub.add_parser("image", help="the tiny guest image the qemu driver boots")
    image_cmds = image.add_subparsers(dest="command", required=True)
    build = image_cmds.add_parser(
        "build", help="build labkit-tiny from Debian packages (instant when cached)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_image_build)
    fault = sub.add_parser("fault", help="break the embedded cloud on purpose, and mend it")
    fault_cmds = fault.add_subparsers(dest="command", required=True)
    fault_cmds.add_parser("kinds", help="what can be broken, and the symptom of each"
                          ).set_defaults(func=_fault_kinds)
    listing = fault_cmds.add_parser("list", help="the faults injected now")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_fault_list)
    inject = fault_cmds.add_parser("inject", help="inject a fault: KIND key=value ...")
    inject.add_argument("kind")
    inject.add_argument("params", nargs="*", metavar="key=value")
    inject.set_defaults(func=_fault_inject)
    clear = fault_cmds.add_parser("clear", help="clear one fault by id, or all of them")
    clear.add_argument("id", nargs="?")
    clear.set_defaults(func=_fault_clear)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except process.CloudError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
