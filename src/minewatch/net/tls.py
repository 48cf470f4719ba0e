"""The server name (SNI) of a TLS ClientHello, read from the first client segment."""

from __future__ import annotations


def is_client_hello(data: bytes) -> bool:
    return len(data) >= 6 and data[0] == 0x16 and data[1] == 0x03 and data[5] == 0x01


def client_hello_sni(data: bytes) -> str | None:
    """The host name of the ``server_name`` extension, or None (no SNI, or cut short)."""
    if not is_client_hello(data):
        return None
    try:
        pos = 5 + 4 + 2 + 32  # record header, handshake header, version, random
        sid_len = data[pos]
        pos += 1 + sid_len
        cs_len = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2 + cs_len
        comp_len = data[pos]
        pos += 1 + comp_len
        ext_total = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        end = min(len(data), pos + ext_total)
        while pos + 4 <= end:
            etype = int.from_bytes(data[pos : pos + 2], "big")
            elen = int.from_bytes(data[pos + 2 : pos + 4], "big")
            body = data[pos + 4 : pos + 4 + elen]
            if etype == 0 and len(body) >= 5:
                name_len = int.from_bytes(body[3:5], "big")
                name = body[5 : 5 + name_len]
                if body[2] == 0 and len(name) == name_len:
                    return name.decode("ascii", errors="replace").lower()
                return None
            pos += 4 + elen
    except IndexError:
        return None
    return None
