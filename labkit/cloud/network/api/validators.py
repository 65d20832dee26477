"""Neutron's attribute converters and validators (neutron-lib's rules, in neutron's words).

A converter turns what a client sent into the stored type, or raises InvalidInput
("Invalid input for operation: 'x' cannot be converted to boolean."; exceptions.invalid_input
takes the reason with its full stop). A validator returns
None for a good value, else the reason; attributes.py words a reason as neutron does:
"Invalid input for cidr. Reason: 'x' is not a valid IP subnet.". A few validators raise
their own error, as neutron's do (allowed address pairs).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from labkit.cloud.network.exceptions import NeutronBadRequest, invalid_input

Validator = Callable[[Any], "str | None"]

TRUE_WORDS = ("1", "t", "true", "on", "y", "yes")
FALSE_WORDS = ("0", "f", "false", "off", "n", "no")
INVALID_MACS = ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")
MAC_FORMS = (re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$"),
             re.compile(r"^[0-9a-f]{12}$"),
             re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$"))
# protocols a security group rule may name (neutron's IP_PROTOCOL_MAP), and their numbers
IP_PROTOCOLS = {"ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1,
                "igmp": 2, "ip": 0, "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44,
                "ipv6-icmp": 58, "icmpv6": 58, "ipv6-nonxt": 59, "ipv6-opts": 60,
                "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6,
                "udp": 17, "udplite": 136, "vrrp": 112}
SG_PROTOCOLS = (None, "any", *IP_PROTOCOLS)
ETHERTYPES = ("IPv4", "IPv6")


# -- converters ---------------------------------------------------------------------------

def to_boolean(value: Any) -> bool:
    """oslo's strict bool_from_string: true/false words, 1/0, or a JSON boolean."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise invalid_input(f"'{value}' cannot be converted to boolean.")


def to_int(value: Any) -> int:
    try:
        return int(value)
    except (ValueError, TypeError) as exc:
        raise invalid_input(f"'{value}' is not an integer.") from exc


def none_to_empty_list(value: Any) -> Any:
    return [] if value is None else value


def ip_to_canonical(value: Any) -> Any:
    """IPv6 addresses in compact form; anything else unchanged (the validator judges it)."""
    try:
        address = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        return value
    return str(address) if address.version == 6 else value


def cidr_to_canonical(value: Any) -> str:
    """'2001:DB8::/64' -> '2001:db8::/64'; host bits are kept, as neutron keeps them."""
    try:
        interface = ipaddress.ip_interface(value if isinstance(value, str) else None)
    except (ValueError, TypeError) as exc:
        raise invalid_input(f"{value} is not in a CIDR format.") from exc
    return f"{interface.ip}/{interface.network.prefixlen}"


def pools_to_canonical(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    try:
        return [{k: ip_to_canonical(v) for k, v in pool.items()} for pool in value]
    except (AttributeError, TypeError) as exc:
        raise invalid_input("Invalid data format for allocation pools.") from exc


def sanitized_mac(value: Any) -> Any:
    """'FA-16-3E-00-00-01' -> 'fa:16:3e:00:00:01'; an invalid MAC is left for the validator."""
    if not isinstance(value, str):
        return value
    digits = re.sub(r"[:.\-]", "", value.strip().lower())
    if not _mac_form(value) or len(digits) != 12:
        return value
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def kvp_list_to_dict(values: Iterable[str]) -> dict[str, list[str]]:
    """['ip_address=10.0.0.3', 'subnet_id=x'] -> {'ip_address': ['10.0.0.3'], ...}."""
    found: dict[str, list[str]] = {}
    for item in values:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise invalid_input(f"'{item}' is not of the form <key>=[value].")
        found.setdefault(key, [])
        if value not in found[key]:
            found[key].append(value)
    return found


def sg_protocol(value: Any) -> str | None:
    """A rule's protocol: None/'any' for all, a name (lower case) or a number 0-255 as text."""
    if value in (None, "any"):
        return None
    try:
        number = int(value)
    except (ValueError, TypeError):
        if isinstance(value, str) and value.lower() in IP_PROTOCOLS:
            return value.lower()
    else:
        if 0 <= number <= 255 and not isinstance(value, bool):
            return str(value)
    raise NeutronBadRequest(
        f"Security group rule protocol {value} not supported. Only protocol values "
        f"{SG_PROTOCOLS} and integer representations [0 to 255] are supported.",
        "SecurityGroupRuleInvalidProtocol")


def sg_ethertype(value: Any) -> str:
    if isinstance(value, str):
        for ethertype in ETHERTYPES:
            if ethertype.lower() == value.lower():
                return ethertype
    raise NeutronBadRequest(
        f"Security group rule for ethertype '{value}' not supported. Allowed values are "
        f"{list(ETHERTYPES)}.", "SecurityGroupRuleInvalidEtherType")


def sg_port(value: Any) -> int | None:
    if value is None:
        return None
    try:
        port = int(value)
    except (ValueError, TypeError):
        port = -1
    if isinstance(value, bool) or not 0 <= port <= 65535:
        raise NeutronBadRequest(f"Invalid value for port {value}", "SecurityGroupInvalidPortValue")
    return port


def sg_ip_prefix(value: Any) -> str | None:
    """A remote prefix as a CIDR ('10.0.0.1' -> '10.0.0.1/32'); the model normalises the network."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_interface(value) if isinstance(value, str) else None)
    except (ValueError, TypeError) as exc:
        raise NeutronBadRequest(f"Invalid CIDR {value} given as IP prefix.",
                                "InvalidCIDR") from exc


# -- validators ---------------------------------------------------------------------------

def _printable(char: str) -> bool:
    return not unicodedata.category(char).startswith("C")


def _is_space(char: str) -> bool:
    return unicodedata.category(char) == "Zs" or not _printable(char)


def string(max_len: int | None = None) -> Validator:
    def check(data: Any) -> str | None:
        if not isinstance(data, str):
            return f"'{data}' is not a valid string"
        if max_len is not None and len(data) > max_len:
            return f"'{data}' exceeds maximum length of {max_len}"
        return None
    return check


def string_or_none(max_len: int | None = None) -> Validator:
    inner = string(max_len)
    return lambda data: None if data is None else inner(data)


def name_string(max_len: int | None = None) -> Validator:
    """A name: printable, not starting or ending with a space."""
    inner = string(max_len)

    def check(data: Any) -> str | None:
        reason = inner(data)
        if reason:
            return reason
        if not all(_printable(c) for c in data) or (
                data and (_is_space(data[0]) or _is_space(data[-1]))):
            return f"'{data}' is not a valid string"
        return None
    return check


def values(allowed: Iterable[Any]) -> Validator:
    choices = list(allowed)

    def check(data: Any) -> str | None:
        try:
            return None if data in choices else f"{data} is not in valid_values"
        except TypeError:
            return f"{data} is not in valid_values"
    return check


def non_negative(data: Any) -> str | None:
    try:
        number = int(data)
    except (ValueError, TypeError):
        return f"'{data}' is not an integer"
    return f"'{data}' should be non-negative" if number < 0 else None


def int_range(low: int, high: int) -> Validator:
    def check(data: Any) -> str | None:
        try:
            number = int(data)
        except (ValueError, TypeError):
            return f"'{data}' is not an integer"
        if number < low:
            return f"'{number}' is too small - must be at least '{low}'"
        if number > high:
            return f"'{number}' is too large - must be no larger than '{high}'"
        return None
    return check


def boolean(data: Any) -> str | None:
    try:
        to_boolean(data)
    except NeutronBadRequest:
        return f"'{data}' is not a valid boolean value"
    return None


def is_uuid_like(data: Any) -> bool:
    """oslo's is_uuid_like: any spelling uuid.UUID reads (dashes, braces, case) of a UUID."""
    try:
        plain = data.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
        return str(uuid.UUID(data)).replace("-", "") == plain.lower()
    except (TypeError, ValueError, AttributeError):
        return False


def uuid_(data: Any) -> str | None:
    return None if is_uuid_like(data) else f"'{data}' is not a valid UUID"


def uuid_or_none(data: Any) -> str | None:
    return None if data is None else uuid_(data)


def _duplicates(items: list[Any]) -> list[Any]:
    seen: list[Any] = []
    dups: list[Any] = []
    for item in items:
        if item in seen and item not in dups:
            dups.append(item)
        seen.append(item)
    return dups


def uuid_list(data: Any) -> str | None:
    if not isinstance(data, list):
        return f"'{data}' is not a list"
    dups = _duplicates(data)
    if dups:
        return f"Duplicate items in the list: '{', '.join(str(d) for d in dups)}'"
    for item in data:
        reason = uuid_(item)
        if reason:
            return reason
    return None


def ip_address(data: Any) -> str | None:
    """An IP address, as neutron accepts it: IPv4 in dotted quad without leading zeros."""
    if not isinstance(data, str) or re.search(r"\s", data):
        return f"'{data}' is not a valid IP address"
    if ":" not in data and data.count(".") != 3:
        return f"'{data}' is not a valid IP address"
    if ":" not in data:
        parts = data.split(".")
        if not all(p.isdigit() for p in parts):
            return f"'{data}' is not a valid IP address"
        unpadded = ".".join(str(int(p)) for p in parts)
        try:
            ipaddress.IPv4Address(unpadded)
        except ValueError:
            return f"'{data}' is not a valid IP address"
        if unpadded != data:
            return f"'{data}' is not an accepted IP address, '{unpadded}' is recommended"
        return None
    try:
        ipaddress.IPv6Address(data)
    except ValueError:
        return f"'{data}' is not a valid IP address"
    return None


def ip_address_or_none(data: Any) -> str | None:
    return None if data is None else ip_address(data)


def subnet(data: Any) -> str | None:
    """A CIDR with its prefix length; an IPv4 one written as neutron writes it."""
    try:
        if not isinstance(data, str) or re.search(r"\s", data) or "/" not in data:
            raise ValueError(data)
        interface = ipaddress.ip_interface(data)
        if interface.version == 4 and f"{interface.ip}/{interface.network.prefixlen}" != data:
            raise ValueError(data)
    except ValueError:
        return f"'{data}' is not a valid IP subnet"
    return None


def subnet_or_none(data: Any) -> str | None:
    return None if data is None else subnet(data)


def route_cidr(data: Any) -> str | None:
    try:
        if not isinstance(data, str) or "/" not in data:
            raise ValueError(data)
        network = ipaddress.ip_network(data)
    except ValueError:
        return f"'{data}' is not a valid CIDR"
    return f"'{data}' is not a routable CIDR" if network.is_loopback else None


def _dict_keys(expected: list[str], target: Any, strict: bool = True) -> str | None:
    if not isinstance(target, dict):
        return f"Invalid input. '{target}' must be a dictionary with keys: {expected}"
    provided = set(target)
    wanted = set(expected)
    if (provided != wanted) if strict else not wanted.issubset(provided):
        return (f"Validation of dictionary's keys failed. Expected keys: {wanted} "
                f"Provided keys: {provided}")
    return None


def ip_pools(data: Any) -> str | None:
    if not isinstance(data, list):
        return f"Invalid data format for IP pool: '{data}'"
    for pool in data:
        reason = _dict_keys(["start", "end"], pool)
        if reason:
            return reason
        for key in ("start", "end"):
            reason = ip_address(pool[key])
            if reason:
                return reason
    return None


def fixed_ips(data: Any) -> str | None:
    if not isinstance(data, list):
        return f"Invalid data format for fixed IP: '{data}'"
    seen: list[Any] = []
    for fixed_ip in data:
        if not isinstance(fixed_ip, dict):
            return f"Invalid data format for fixed IP: '{fixed_ip}'"
        if "ip_address" in fixed_ip:
            address = fixed_ip["ip_address"]
            reason = (f"Duplicate IP address '{address}'" if address in seen
                      else ip_address(address))
            if reason:
                return reason
            seen.append(address)
        if "subnet_id" in fixed_ip:
            reason = uuid_(fixed_ip["subnet_id"])
            if reason:
                return reason
    return None


def nameservers(data: Any) -> str | None:
    if not isinstance(data, list | tuple):
        return f"Invalid data format for nameserver: '{data}'"
    seen: list[Any] = []
    for host in data:
        reason = ip_address(host)
        if reason:
            return f"'{host}' is not a valid nameserver. {reason}"
        if host in seen:
            return f"Duplicate nameserver '{host}'"
        seen.append(host)
    return None


def hostroutes(data: Any) -> str | None:
    if not isinstance(data, list):
        return f"Invalid data format for hostroute: '{data}'"
    seen: list[Any] = []
    for route in data:
        reason = (_dict_keys(["destination", "nexthop"], route)
                  or route_cidr(route["destination"]) or ip_address(route["nexthop"]))
        if reason:
            return reason
        if route in seen:
            return f"Duplicate hostroute '{route}'"
        seen.append(route)
    return None


def _mac_form(data: str) -> bool:
    return any(form.match(data.strip().lower()) for form in MAC_FORMS)


def mac_address(data: Any) -> str | None:
    if (not isinstance(data, str) or re.search(r"\s", data) or not _mac_form(data)
            or sanitized_mac(data) in INVALID_MACS):
        return f"'{data}' is not a valid MAC address"
    return None


def dict_or_none(data: Any) -> str | None:
    if data is None or isinstance(data, dict):
        return None
    return f"'{data}' is not a dictionary"


def dict_spec(spec: dict[str, tuple[bool, Callable[[Any], Any] | None, Validator | None]],
              ) -> Validator:
    """A dict holding only `spec`'s keys: key -> (required, converter, validator).

    Converted values are written back into the dict, as neutron's dict validator does.
    """
    def check(data: Any) -> str | None:
        if not isinstance(data, dict):
            return f"'{data}' is not a dictionary"
        required = [k for k, (needed, _, _) in spec.items() if needed]
        reason = _dict_keys(required, data, strict=False) if required else None
        if reason:
            return reason
        unexpected = [k for k in data if k not in spec]
        if unexpected:
            return f"Unexpected keys supplied: {', '.join(unexpected)}"
        for key, (_, convert, validate) in spec.items():
            if key not in data:
                continue
            if convert is not None:
                data[key] = convert(data[key])
            reason = validate(data[key]) if validate else None
            if reason:
                return reason
        return None
    return check


def dict_or_nodata(spec: dict[str, tuple[bool, Callable[[Any], Any] | None, Validator | None]],
                   ) -> Validator:
    inner = dict_spec(spec)
    return lambda data: None if not data else inner(data)


def allowed_address_pairs(data: Any) -> str | None:
    """Neutron's checks on a port's allowed_address_pairs (some raise their own error)."""
    if not isinstance(data, list):
        raise NeutronBadRequest("Allowed address pairs must be a list.")
    seen: set[tuple[Any, Any]] = set()
    for pair in data:
        if not isinstance(pair, dict):
            return f"'{pair}' is not a dictionary"
        if "mac_address" in pair:
            reason = mac_address(pair["mac_address"])
            if reason:
                raise NeutronBadRequest(reason)
        if "ip_address" not in pair:
            raise NeutronBadRequest("AllowedAddressPair must contain ip_address",
                                    "AllowedAddressPairsMissingIP")
        key = (pair.get("mac_address"), pair["ip_address"])
        if key in seen:
            raise NeutronBadRequest(
                f"Request contains duplicate address pair: mac_address {key[0]} "
                f"ip_address {key[1]}.", "DuplicateAddressPairInRequest")
        seen.add(key)
        extra = set(pair) - {"mac_address", "ip_address"}
        if extra:
            raise NeutronBadRequest(f"Unrecognized attribute(s) '{', '.join(extra)}'")
        address = pair["ip_address"]
        reason = subnet(address) if "/" in str(address) else ip_address(address)
        if reason:
            raise NeutronBadRequest(reason)
    return None
