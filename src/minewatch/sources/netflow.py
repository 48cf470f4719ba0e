"""NetFlow v5, v9 and IPFIX export packets into the canonical ``flows`` table.

The decoder is :class:`NetflowDecoder`. It is fed one export datagram at a time (with the
address of the exporter that sent it) and keeps, per exporter and observation domain:

* the templates and options templates (redefinition replaces, IPFIX withdrawal removes);
* data sets that arrived before their template, in a bounded buffer; they are decoded when
  the template comes, and counted as rejected (``template never arrived``) when they fall
  out of the buffer or when the input ends;
* the sampling rate learnt from options data (v9 ``SAMPLING_INTERVAL``/``FLOW_SAMPLER_*``,
  IPFIX ``samplingPacketInterval``/``samplingPacketSpace`` and friends) or from the v5 header,
  carried into every record's ``sampling`` column;
* ``systemInitTimeMilliseconds`` (IPFIX) for records timed in system up-time;
* the export sequence, to count lost datagrams and sequences that go backwards.

Parsing a datagram's headers is a loop over its few sets (the format forces it); the records
themselves are not touched one by one: all data sets stashed since the last :meth:`take`
are grouped by template, concatenated and decoded with one NumPy structured ``frombuffer``
per template, then validated and converted column-wise. Only templates with variable-length
fields are walked record by record, to cut out their fixed-length part.

Files: :func:`read_netflow` reads a pcap/pcapng of UDP export packets or a file of raw
concatenated export datagrams (:func:`split_datagrams` finds the boundaries).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from minewatch.errors import InputError, Quarantine
from minewatch.schema import DNS, FLOWS
from minewatch.sources.flowstore import IngestResult

SOURCE = "netflow"

# Information elements (IANA IPFIX registry; ids below 128 are shared with NetFlow v9).
IE_OCTETS = 1
IE_PACKETS = 2
IE_PROTO = 4
IE_TCP_FLAGS = 6
IE_SRC_PORT = 7
IE_SRC_V4 = 8
IE_DST_PORT = 11
IE_DST_V4 = 12
IE_LAST_UPTIME = 21
IE_FIRST_UPTIME = 22
IE_OUT_OCTETS = 23
IE_OUT_PACKETS = 24
IE_SRC_V6 = 27
IE_ICMP_TYPE_CODE = 32
IE_ICMP6_TYPE_CODE = 139
IE_DST_V6 = 28
IE_SAMPLING_INTERVAL = 34
IE_SAMPLER_ID = 48
IE_SAMPLER_RANDOM_INTERVAL = 50
IE_OCTETS_TOTAL = 85
IE_PACKETS_TOTAL = 86
IE_START_S = 150
IE_END_S = 151
IE_START_MS = 152
IE_END_MS = 153
IE_START_US = 154
IE_END_US = 155
IE_START_NS = 156
IE_END_NS = 157
IE_SYSTEM_INIT_MS = 160
IE_SELECTOR_ID = 302
IE_SAMPLING_PACKET_INTERVAL = 305
IE_SAMPLING_PACKET_SPACE = 306
IE_SAMPLING_SIZE = 309
IE_SAMPLING_POPULATION = 310
IE_FWD_DELTA_OCTETS_ASA = 231
IE_REV_DELTA_OCTETS_ASA = 232
# RFC 5103 reverse information elements carry this private enterprise number.
PEN_REVERSE = 29305
VARLEN = 65535
NTP_EPOCH_OFFSET_S = 2_208_988_800

V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_RECORD = np.dtype(
    [
        ("src", ">u4"),
        ("dst", ">u4"),
        ("nexthop", ">u4"),
        ("input", ">u2"),
        ("output", ">u2"),
        ("packets", ">u4"),
        ("octets", ">u4"),
        ("first", ">u4"),
        ("last", ">u4"),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("pad1", "u1"),
        ("flags", "u1"),
        ("proto", "u1"),
        ("tos", "u1"),
        ("src_as", ">u2"),
        ("dst_as", ">u2"),
        ("src_mask", "u1"),
        ("dst_mask", "u1"),
        ("pad2", ">u2"),
    ]
)
V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
SET_HEADER = struct.Struct("!HH")

# Time modes of a stashed set: how its records' up-time stamps become wall-clock time.
_TIME_BASE = 0  # ts = base_ms + uptime_ms (v5, v9, IPFIX with systemInitTimeMilliseconds)
_TIME_ANCHOR_END = 1  # IPFIX without a known system init time: the flow ended at export
_V5_SET = -5  # pseudo template id of a v5 datagram's records


@dataclass(frozen=True)
class Template:
    """One (options) template as announced by an exporter."""

    version: int
    template_id: int
    fields: tuple[tuple[int, int, int], ...]  # (element id, length, enterprise number)
    scope_count: int = 0  # options templates: how many leading fields are scope fields
    is_options: bool = False

    @cached_property
    def variable(self) -> bool:
        return any(length == VARLEN for _, length, _ in self.fields)

    @cached_property
    def fixed_fields(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(f for f in self.fields if f[1] not in (0, VARLEN))

    @cached_property
    def record_length(self) -> int:
        """Length of a record in bytes; for variable-length templates, the minimum."""
        return sum(1 if length == VARLEN else length for _, length, _ in self.fields)


@dataclass
class DecoderStats:
    """Counters of a decoder; the collector exports them as Prometheus metrics."""

    datagrams: int = 0
    datagrams_decoded: int = 0
    datagrams_rejected: int = 0
    templates_received: int = 0
    template_refreshes: int = 0
    template_redefinitions: int = 0
    template_withdrawals: int = 0
    templates_rejected: int = 0
    options_records: int = 0
    flows_decoded: int = 0
    flows_accepted: int = 0
    flows_rejected: int = 0
    sets_held: int = 0
    sets_released: int = 0
    sets_expired: int = 0
    sequence_lost: int = 0
    sequence_backwards: int = 0
    zero_length_fields: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Domain:
    """State of one (exporter, version, observation domain)."""

    templates: dict[int, Template] = field(default_factory=dict)
    system_init_ms: int | None = None
    default_sampling: int = 1
    sampler_rates: dict[int, int] = field(default_factory=dict)
    last_sequence: int | None = None
    last_advance: int = 0
    template_sets: dict[bytes, list[Template]] = field(default_factory=dict)


@dataclass
class _Stashed:
    """A data set waiting to be decoded (its template known) or held (template unknown)."""

    key: tuple[str, int, int]
    template_id: int
    body: bytes
    export_ms: int
    base_ms: int
    time_mode: int
    sampling: int
    where: str
    template: Template | None = None


class DatagramError(ValueError):
    """A datagram, or the rest of it, that cannot be decoded; the message is the reason."""


_OCTETS = pa.array([str(i) for i in range(256)], pa.string())


def _ip4_strings(values: np.ndarray) -> pa.Array:
    """Dotted quads, column-wise: each octet is looked up in a table, then joined."""
    octets = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    parts = [_OCTETS.take(pa.array(np.ascontiguousarray(octets[:, i]))) for i in range(4)]
    out: pa.Array = pc.binary_join_element_wise(*parts, ".")
    return out


def _strings(values: pa.Array | list[str | None]) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(values, pa.string())


def _ip6_strings(raw: np.ndarray) -> list[str | None]:
    """Format 16-byte addresses; each distinct address is formatted once."""
    if len(raw) == 0:
        return []
    view = np.ascontiguousarray(raw).view("V16").ravel()
    uniq, inverse = np.unique(view, return_inverse=True)
    text = np.array([str(ipaddress.IPv6Address(u.tobytes())) for u in uniq], dtype=object)
    out: list[str | None] = text[inverse.ravel()].tolist()
    return out


def _uint(raw: np.ndarray) -> np.ndarray:
    """Big-endian unsigned integers of any width 1..8 (an (N, width) uint8 array)."""
    width = raw.shape[1]
    if width in (1, 2, 4, 8):
        return np.ascontiguousarray(raw).view(f">u{width}").ravel().astype(np.uint64)
    out = np.zeros(raw.shape[0], dtype=np.uint64)
    for i in range(width):
        out = (out << np.uint64(8)) | raw[:, i].astype(np.uint64)
    return out


class NetflowDecoder:
    """Stateful NetFlow v5/v9/IPFIX decoder: feed datagrams, take FLOWS record batches.

    >>> dec = NetflowDecoder()
    >>> dec.feed(bytes(4), "127.0.0.1")  # too short to be anything: counted, not raised
    0
    >>> dec.stats.datagrams_rejected
    1
    """

    def __init__(
        self,
        quarantine: Quarantine | None = None,
        *,
        max_held_sets: int = 4096,
        source: str = SOURCE,
    ) -> None:
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        self.max_held_sets = max_held_sets
        self.source = source
        self.stats = DecoderStats()
        self._domains: dict[tuple[str, int, int], _Domain] = {}
        self._ready: list[_Stashed] = []
        self._held: deque[_Stashed] = deque()
        self._datagram_no = 0
        self._records_added = 0

    # ----------------------------------------------------------------- state views
    @property
    def template_count(self) -> int:
        return sum(len(d.templates) for d in self._domains.values())

    @property
    def held_sets(self) -> int:
        return len(self._held)

    @property
    def ready_sets(self) -> int:
        """Data sets fed and waiting for :meth:`take`."""
        return len(self._ready)

    def sampling_for(self, exporter: str, version: int, domain: int = 0) -> int:
        d = self._domains.get((exporter, version, domain))
        return d.default_sampling if d else 1

    # ----------------------------------------------------------------- feeding
    def feed(self, data: bytes, exporter: str, received_ms: int | None = None) -> int:
        """Parse one export datagram. Returns the number of data sets now ready to decode.

        Never raises for bad content: a datagram that cannot be decoded is counted in
        ``stats.datagrams_rejected`` and quarantined with the reason.
        """
        self.stats.datagrams += 1
        self._datagram_no += 1
        where = f"{exporter} datagram {self._datagram_no}"
        before = len(self._ready)
        try:
            if len(data) < 4:
                raise DatagramError(f"datagram of {len(data)} bytes is too short for a header")
            version = int.from_bytes(data[:2], "big")
            if version == 5:
                self._feed_v5(data, exporter, where)
            elif version == 9:
                self._feed_v9(data, exporter, where)
            elif version == 10:
                self._feed_ipfix(data, exporter, where)
            else:
                raise DatagramError(f"unknown export version {version}")
        except DatagramError as exc:
            self.stats.datagrams_rejected += 1
            self.quarantine.reject(self.source, where, str(exc), bytes(data))
            return len(self._ready) - before
        self.stats.datagrams_decoded += 1
        return len(self._ready) - before

    def _domain(self, key: tuple[str, int, int]) -> _Domain:
        d = self._domains.get(key)
        if d is None:
            d = self._domains[key] = _Domain()
        return d

    def _check_sequence(
        self, dom: _Domain, sequence: int, advance: int, inclusive_ok: bool = False
    ) -> None:
        """Count export sequence gaps (lost upstream) and sequences that go backwards.

        ``advance`` is how far this message moves the sequence (records or datagrams).
        ``inclusive_ok`` also accepts the convention where the sequence already includes
        this message's own records (softflowd's IPFIX export does so).
        """
        if dom.last_sequence is not None:
            step = (sequence - dom.last_sequence) & 0xFFFFFFFF
            if step == dom.last_advance or (inclusive_ok and step == advance):
                pass
            elif step >= 0x80000000:
                self.stats.sequence_backwards += 1
            else:
                self.stats.sequence_lost += max(0, step - dom.last_advance)
        dom.last_sequence = sequence
        dom.last_advance = advance

    def _feed_v5(self, data: bytes, exporter: str, where: str) -> None:
        if len(data) < V5_HEADER.size:
            raise DatagramError("truncated NetFlow v5 header")
        _, count, uptime, secs, nsecs, sequence, _etype, _eid, sampling = V5_HEADER.unpack_from(
            data
        )
        key = (exporter, 5, 0)
        dom = self._domain(key)
        rate = sampling & 0x3FFF
        dom.default_sampling = rate if rate > 0 else 1
        self._check_sequence(dom, sequence, count)
        body = data[V5_HEADER.size :]
        fit = len(body) // V5_RECORD.itemsize
        export_ms = secs * 1000 + nsecs // 1_000_000
        if count:
            self._ready.append(
                _Stashed(
                    key,
                    _V5_SET,
                    body[: min(count, fit) * V5_RECORD.itemsize],
                    export_ms,
                    export_ms - uptime,
                    _TIME_BASE,
                    dom.default_sampling,
                    where,
                )
            )
        if fit < count:
            raise DatagramError(
                f"truncated NetFlow v5 datagram: header says {count} records, {fit} fit"
            )

    def _feed_v9(self, data: bytes, exporter: str, where: str) -> None:
        if len(data) < V9_HEADER.size:
            raise DatagramError("truncated NetFlow v9 header")
        _, _count, uptime, secs, sequence, source_id = V9_HEADER.unpack_from(data)
        key = (exporter, 9, source_id)
        dom = self._domain(key)
        self._check_sequence(dom, sequence, 1)
        export_ms = secs * 1000
        self._walk_sets(
            data, V9_HEADER.size, len(data), key, dom, export_ms, export_ms - uptime, where
        )

    def _feed_ipfix(self, data: bytes, exporter: str, where: str) -> None:
        if len(data) < IPFIX_HEADER.size:
            raise DatagramError("truncated IPFIX header")
        _, length, secs, sequence, domain_id = IPFIX_HEADER.unpack_from(data)
        if length < IPFIX_HEADER.size:
            raise DatagramError(f"IPFIX message length {length} is shorter than its header")
        end = min(length, len(data))
        key = (exporter, 10, domain_id)
        dom = self._domain(key)
        export_ms = secs * 1000
        self._records_added = 0
        try:
            self._walk_sets(data, IPFIX_HEADER.size, end, key, dom, export_ms, 0, where)
        finally:
            # IPFIX sequence numbers count data records (RFC 7011 section 3.1); when some
            # records could not be counted yet, start again from the next message.
            if self._records_added >= 0:
                self._check_sequence(dom, sequence, self._records_added, inclusive_ok=True)
            else:
                dom.last_sequence = None
        if length > len(data):
            raise DatagramError(
                f"truncated IPFIX message: header says {length} bytes, {len(data)} arrived"
            )

    def _walk_sets(
        self,
        data: bytes,
        offset: int,
        end: int,
        key: tuple[str, int, int],
        dom: _Domain,
        export_ms: int,
        base_ms: int,
        where: str,
    ) -> None:
        version = key[1]
        template_set, options_set = (0, 1) if version == 9 else (2, 3)
        while offset + 4 <= end:
            set_id, set_len = SET_HEADER.unpack_from(data, offset)
            if set_len < 4:
                raise DatagramError(f"set {set_id} at byte {offset} has length {set_len} (< 4)")
            if offset + set_len > end:
                raise DatagramError(
                    f"set {set_id} at byte {offset} runs past the end of the datagram"
                    f" ({set_len} bytes announced, {end - offset} left)"
                )
            body = data[offset + 4 : offset + set_len]
            if set_id in (template_set, options_set):
                cached = dom.template_sets.get(body)
                if cached is not None:
                    # The same template set again (a periodic refresh): no need to parse it.
                    self.stats.template_refreshes += 1
                    for t in cached:
                        if dom.templates.get(t.template_id) is not t:
                            self._install(key, dom, t, where)
                else:
                    before = dict(dom.templates)
                    self._parse_templates(
                        body, key, dom, version, options=set_id == options_set, where=where
                    )
                    if len(dom.template_sets) >= 64:
                        dom.template_sets.clear()
                    dom.template_sets[body] = [
                        t for tid, t in dom.templates.items() if before.get(tid) is not t
                    ]
            elif set_id >= 256:
                self._data_set(set_id, body, key, dom, export_ms, base_ms, where)
            else:
                raise DatagramError(f"set id {set_id} at byte {offset} is reserved")
            offset += set_len
        if end - offset > 0 and any(data[offset:end]):
            raise DatagramError(f"{end - offset} stray bytes after the last set")

    # ----------------------------------------------------------------- templates
    def _parse_templates(
        self,
        body: bytes,
        key: tuple[str, int, int],
        dom: _Domain,
        version: int,
        *,
        options: bool,
        where: str,
    ) -> None:
        off = 0
        n = len(body)
        while n - off >= 4:
            if version == 9 and options:
                if n - off < 6:
                    break
                tid, scope_len, opt_len = struct.unpack_from("!HHH", body, off)
                off += 6
                if scope_len % 4 or opt_len % 4:
                    raise DatagramError(
                        f"options template {tid}: scope/option lengths {scope_len}/{opt_len}"
                        " are not multiples of 4"
                    )
                scope_count = scope_len // 4
                total = scope_count + opt_len // 4
            else:
                tid, total = struct.unpack_from("!HH", body, off)
                off += 4
                scope_count = 0
                if options and version == 10 and total > 0:
                    if n - off < 2:
                        raise DatagramError(f"options template {tid} is truncated")
                    (scope_count,) = struct.unpack_from("!H", body, off)
                    off += 2
            if tid < 256:
                if tid == 0 and total == 0:
                    break  # padding at the end of the set
                raise DatagramError(f"template id {tid} is reserved (must be >= 256)")
            if total == 0 and version == 10:
                if tid in dom.templates:
                    del dom.templates[tid]
                    self.stats.template_withdrawals += 1
                continue
            flist: list[tuple[int, int, int]] = []
            for _ in range(total):
                if n - off < 4:
                    raise DatagramError(f"template {tid} is truncated")
                ie, length = struct.unpack_from("!HH", body, off)
                off += 4
                pen = 0
                if version == 10 and ie & 0x8000:
                    if n - off < 4:
                        raise DatagramError(f"template {tid} is truncated")
                    (pen,) = struct.unpack_from("!I", body, off)
                    off += 4
                    ie &= 0x7FFF
                flist.append((ie, length, pen))
            if version == 9 and options and off % 4:
                off += 4 - off % 4  # v9 options templates pad to 32 bits
            self._install(
                key, dom, Template(version, tid, tuple(flist), scope_count, options), where
            )

    def _install(self, key: tuple[str, int, int], dom: _Domain, t: Template, where: str) -> None:
        zero = sum(1 for _, length, _ in t.fields if length == 0)
        if zero:
            self.stats.zero_length_fields += zero
            self.quarantine.reject(
                self.source,
                f"{where} template {t.template_id}",
                f"template has {zero} zero-length field(s); they carry no data and are skipped",
                [list(f) for f in t.fields],
            )
        if t.record_length == 0:
            self.stats.templates_rejected += 1
            self.quarantine.reject(
                self.source,
                f"{where} template {t.template_id}",
                "template describes zero-length records; ignored",
                [list(f) for f in t.fields],
            )
            return
        old = dom.templates.get(t.template_id)
        if old is not None and old != t:
            self.stats.template_redefinitions += 1
        dom.templates[t.template_id] = t
        self.stats.templates_received += 1
        self._release(key, t)

    def _release(self, key: tuple[str, int, int], t: Template) -> None:
        if not self._held:
            return
        keep: deque[_Stashed] = deque()
        for s in self._held:
            if s.key == key and s.template_id == t.template_id:
                self.stats.sets_released += 1
                self._accept_set(s, t, self._domain(key))
            else:
                keep.append(s)
        self._held = keep

    # ----------------------------------------------------------------- data sets
    def _data_set(
        self,
        set_id: int,
        body: bytes,
        key: tuple[str, int, int],
        dom: _Domain,
        export_ms: int,
        base_ms: int,
        where: str,
    ) -> None:
        s = _Stashed(key, set_id, body, export_ms, base_ms, _TIME_BASE, dom.default_sampling, where)
        t = dom.templates.get(set_id)
        if t is None:
            self.stats.sets_held += 1
            self._records_added = -1  # record count unknown until the template comes
            self._held.append(s)
            while len(self._held) > self.max_held_sets:
                self._expire(self._held.popleft(), "buffer full")
            return
        if self._records_added >= 0 and not t.is_options:
            self._records_added += len(body) // t.record_length
        self._accept_set(s, t, dom)

    def _accept_set(self, s: _Stashed, t: Template, dom: _Domain) -> None:
        if t.is_options:
            self._options_data(s, t, dom)
            return
        if s.key[1] == 10:
            if dom.system_init_ms is not None:
                s.base_ms = dom.system_init_ms
            else:
                s.time_mode = _TIME_ANCHOR_END
        s.sampling = dom.default_sampling
        s.template = t
        self._ready.append(s)

    def _expire(self, s: _Stashed, why: str) -> None:
        self.stats.sets_expired += 1
        self.quarantine.reject(
            self.source,
            f"{s.where} set {s.template_id}",
            f"template {s.template_id} never arrived ({why}); data set dropped",
            s.body,
        )

    def _options_data(self, s: _Stashed, t: Template, dom: _Domain) -> None:
        """Options records are few; read them one by one for sampling and system init time."""
        off = 0
        body = s.body
        while True:
            rec: dict[int, int] = {}
            scope: dict[int, int] = {}
            start = off
            for i, (ie, length, pen) in enumerate(t.fields):
                if length == VARLEN:
                    if off >= len(body):
                        break
                    length = body[off]
                    off += 1
                    if length == 255:
                        if off + 2 > len(body):
                            break
                        length = int.from_bytes(body[off : off + 2], "big")
                        off += 2
                if off + length > len(body):
                    off = len(body) + 1
                    break
                if pen == 0 and length <= 8:
                    value = int.from_bytes(body[off : off + length], "big")
                    (scope if i < t.scope_count else rec)[ie] = value
                off += length
            if off > len(body) or off == start:
                break
            self.stats.options_records += 1
            if IE_SYSTEM_INIT_MS in rec:
                dom.system_init_ms = rec[IE_SYSTEM_INIT_MS]
            rate = _sampling_rate(rec)
            if rate is not None:
                sampler = rec.get(IE_SAMPLER_ID, rec.get(IE_SELECTOR_ID))
                if sampler is None:
                    dom.default_sampling = rate
                else:
                    dom.sampler_rates[sampler] = rate
                    if len(dom.sampler_rates) == 1:
                        dom.default_sampling = rate
            if len(body) - off < t.record_length:
                break

    # ----------------------------------------------------------------- decoding
    def take(self) -> pa.RecordBatch:
        """Decode every data set fed since the last call; return the accepted FLOWS rows."""
        ready, self._ready = self._ready, []
        if not ready:
            return _empty_batch()
        groups: dict[object, list[_Stashed]] = {}
        for s in ready:
            groups.setdefault(s.template if s.template is not None else s.template_id, []).append(s)
        parts = [self._decode_group(g) for g in groups.values()]
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return _empty_batch()
        if len(parts) == 1:
            return parts[0]
        return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]

    def finish(self) -> pa.RecordBatch:
        """Decode what is ready, then reject every set still waiting for its template."""
        batch = self.take()
        while self._held:
            self._expire(self._held.popleft(), "input ended")
        return batch

    def _decode_group(self, group: list[_Stashed]) -> pa.RecordBatch:
        if group[0].template_id == _V5_SET:
            return self._decode_v5(group)
        t = group[0].template
        if t is None:  # only v5 bodies and sets with a known template reach the ready list
            return _empty_batch()
        fixed = t.fixed_fields
        dtype = np.dtype([(f"f{i}", "u1", (length,)) for i, (_, length, _) in enumerate(fixed)])
        bodies: list[bytes] = []
        counts: list[int] = []
        if t.variable:
            for s in group:
                recs = _cut_variable(s.body, t)
                bodies.append(b"".join(recs))
                counts.append(len(recs))
        else:
            rl = t.record_length
            for s in group:
                n = len(s.body) // rl
                bodies.append(s.body[: n * rl])
                counts.append(n)
        buf = b"".join(bodies)
        total = sum(counts)
        if total == 0:
            return _empty_batch()
        arr = np.frombuffer(buf, dtype=dtype, count=total)
        cols: dict[tuple[int, int], np.ndarray] = {}
        for i, (ie, _, pen) in enumerate(fixed):
            cols.setdefault((ie, pen), arr[f"f{i}"])
        ctx = _context(group, counts)
        return self._to_flows(cols, ctx, group, counts)

    def _decode_v5(self, group: list[_Stashed]) -> pa.RecordBatch:
        counts = [len(s.body) // V5_RECORD.itemsize for s in group]
        arr = np.frombuffer(b"".join(s.body for s in group), dtype=V5_RECORD)

        def raw(name: str, width: int) -> np.ndarray:
            return arr[name].astype(f">u{width}").view(np.uint8).reshape(-1, width)

        cols = {
            (IE_SRC_V4, 0): raw("src", 4),
            (IE_DST_V4, 0): raw("dst", 4),
            (IE_PACKETS, 0): raw("packets", 4),
            (IE_OCTETS, 0): raw("octets", 4),
            (IE_FIRST_UPTIME, 0): raw("first", 4),
            (IE_LAST_UPTIME, 0): raw("last", 4),
            (IE_SRC_PORT, 0): raw("sport", 2),
            (IE_DST_PORT, 0): raw("dport", 2),
            (IE_TCP_FLAGS, 0): raw("flags", 1),
            (IE_PROTO, 0): raw("proto", 1),
        }
        return self._to_flows(cols, _context(group, counts), group, counts)

    def _to_flows(
        self,
        cols: dict[tuple[int, int], np.ndarray],
        ctx: dict[str, np.ndarray],
        group: list[_Stashed],
        counts: list[int],
    ) -> pa.RecordBatch:
        n = len(ctx["export_ms"])
        self.stats.flows_decoded += n

        def num(*ies: tuple[int, int]) -> np.ndarray | None:
            for ie in ies:
                if ie in cols and cols[ie].shape[1] <= 8:
                    return _uint(cols[ie])
            return None

        zeros = np.zeros(n, dtype=np.uint64)
        # Addresses.
        src_ip: pa.Array | list[str | None]
        dst_ip: pa.Array | list[str | None]
        has_ip = np.ones(n, dtype=bool)
        if (IE_SRC_V4, 0) in cols and cols[(IE_SRC_V4, 0)].shape[1] == 4:
            src_ip = _ip4_strings(_uint(cols[(IE_SRC_V4, 0)]))
            dst_ip = (
                _ip4_strings(_uint(cols[(IE_DST_V4, 0)]))
                if (IE_DST_V4, 0) in cols and cols[(IE_DST_V4, 0)].shape[1] == 4
                else pa.nulls(n, pa.string())
            )
            if (IE_DST_V4, 0) not in cols:
                has_ip[:] = False
        elif (IE_SRC_V6, 0) in cols and cols[(IE_SRC_V6, 0)].shape[1] == 16:
            src_ip = _ip6_strings(cols[(IE_SRC_V6, 0)])
            dst_ip = (
                _ip6_strings(cols[(IE_DST_V6, 0)])
                if (IE_DST_V6, 0) in cols and cols[(IE_DST_V6, 0)].shape[1] == 16
                else [None] * n
            )
            if (IE_DST_V6, 0) not in cols:
                has_ip[:] = False
        else:
            src_ip = [None] * n
            dst_ip = [None] * n
            has_ip[:] = False

        sport = num((IE_SRC_PORT, 0))
        # ICMP records carry type * 256 + code instead of ports (as NetFlow v5 and nfdump do).
        dport = num((IE_DST_PORT, 0), (IE_ICMP_TYPE_CODE, 0), (IE_ICMP6_TYPE_CODE, 0))
        proto = num((IE_PROTO, 0))
        flags = num((IE_TCP_FLAGS, 0))
        octets = num((IE_OCTETS, 0), (IE_FWD_DELTA_OCTETS_ASA, 0), (IE_OCTETS_TOTAL, 0))
        packets = num((IE_PACKETS, 0), (IE_PACKETS_TOTAL, 0))
        octets_down = num(
            (IE_OUT_OCTETS, 0), (IE_OCTETS, PEN_REVERSE), (IE_REV_DELTA_OCTETS_ASA, 0)
        )
        packets_down = num((IE_OUT_PACKETS, 0), (IE_PACKETS, PEN_REVERSE))

        # Times, in milliseconds since the epoch.
        export_ms = ctx["export_ms"]
        first_up = num((IE_FIRST_UPTIME, 0))
        last_up = num((IE_LAST_UPTIME, 0))
        start_ms: np.ndarray | None = None
        end_ms: np.ndarray | None = None
        for s_ie, e_ie, conv in (
            (IE_START_MS, IE_END_MS, _ms_from_ms),
            (IE_START_US, IE_END_US, _ms_from_ntp),
            (IE_START_NS, IE_END_NS, _ms_from_ntp),
            (IE_START_S, IE_END_S, _ms_from_s),
        ):
            a, b = num((s_ie, 0)), num((e_ie, 0))
            if a is not None and b is not None:
                start_ms, end_ms = conv(a), conv(b)
                break
            if a is not None or b is not None:
                start_ms = end_ms = conv(a if a is not None else b)  # type: ignore[arg-type]
                break
        if start_ms is None or end_ms is None:
            if first_up is not None or last_up is not None:
                fu = (first_up if first_up is not None else last_up).astype(np.int64)  # type: ignore[union-attr]
                lu = (last_up if last_up is not None else first_up).astype(np.int64)  # type: ignore[union-attr]
                anchor = ctx["time_mode"] == _TIME_ANCHOR_END
                base = ctx["base_ms"]
                start_ms = np.where(anchor, export_ms - (lu - fu), base + fu)
                end_ms = np.where(anchor, export_ms, base + lu)
            else:
                start_ms = export_ms
                end_ms = export_ms

        sampling = ctx["sampling"].copy()
        rec_rate = num((IE_SAMPLING_INTERVAL, 0), (IE_SAMPLER_RANDOM_INTERVAL, 0))
        if rec_rate is not None:
            sampling = np.where(rec_rate > 0, rec_rate.astype(np.int64), sampling)
        sampler_id = num((IE_SAMPLER_ID, 0), (IE_SELECTOR_ID, 0))
        if sampler_id is not None:
            sampling = self._sampler_lookup(group, counts, sampler_id, sampling)

        bad_time = end_ms < start_ms
        reasons: list[tuple[np.ndarray, str]] = [
            (~has_ip, "record has no source/destination address (template lacks them)"),
            (has_ip & bad_time, "flow ends before it starts"),
        ]
        reject = ~has_ip | bad_time
        exporter = ctx["exporter"]
        table = pa.table(
            {
                "ts_start": pa.array(start_ms.astype("datetime64[ms]")).cast(
                    FLOWS.field("ts_start").type
                ),
                "ts_end": pa.array(end_ms.astype("datetime64[ms]")).cast(
                    FLOWS.field("ts_end").type
                ),
                "src_ip": _strings(src_ip),
                "dst_ip": _strings(dst_ip),
                "src_port": pa.array((sport if sport is not None else zeros).astype(np.int32)),
                "dst_port": pa.array((dport if dport is not None else zeros).astype(np.int32)),
                "proto": pa.array((proto if proto is not None else zeros).astype(np.int16)),
                "packets_up": pa.array(
                    (packets if packets is not None else zeros).astype(np.int64)
                ),
                "packets_down": pa.array(
                    (packets_down if packets_down is not None else zeros).astype(np.int64)
                ),
                "bytes_up": pa.array((octets if octets is not None else zeros).astype(np.int64)),
                "bytes_down": pa.array(
                    (octets_down if octets_down is not None else zeros).astype(np.int64)
                ),
                "tcp_flags": pa.array((flags if flags is not None else zeros).astype(np.int16)),
                "sni": pa.nulls(n, pa.string()),
                "exporter": pa.DictionaryArray.from_arrays(
                    pa.array(exporter.astype(np.int32)),
                    pa.array(ctx["exporter_names"].tolist(), pa.string()),
                ).cast(pa.string()),
                "sampling": pa.array(sampling.astype(np.int32)),
            }
        ).select(FLOWS.names)
        if reject.any():
            self._quarantine_rows(table, reasons)
            table = table.filter(pa.array(~reject))
        self.stats.flows_rejected += int(reject.sum())
        self.stats.flows_accepted += table.num_rows
        batch = table.cast(FLOWS).combine_chunks().to_batches()
        return batch[0] if batch else _empty_batch()

    def _sampler_lookup(
        self, group: list[_Stashed], counts: list[int], sampler_id: np.ndarray, sampling: np.ndarray
    ) -> np.ndarray:
        out = sampling.copy()
        pos = 0
        for s, c in zip(group, counts, strict=True):
            dom = self._domains.get(s.key)
            if dom and dom.sampler_rates and c:
                ids = sampler_id[pos : pos + c]
                uniq = np.unique(ids)
                for u in uniq.tolist():
                    rate = dom.sampler_rates.get(int(u))
                    if rate is not None:
                        out[pos : pos + c][ids == u] = rate
            pos += c
        return out

    def _quarantine_rows(self, table: pa.Table, reasons: list[tuple[np.ndarray, str]]) -> None:
        for mask, reason in reasons:
            idx = np.flatnonzero(mask)
            if len(idx) == 0:
                continue
            rows = table.take(pa.array(idx)).to_pylist()
            for i, row in zip(idx.tolist(), rows, strict=True):
                self.quarantine.reject(self.source, f"{row['exporter']} record {i}", reason, row)


def _sampling_rate(rec: dict[int, int]) -> int | None:
    """One-in-N packet sampling rate from an options record, if it carries one."""
    if rec.get(IE_SAMPLING_INTERVAL):
        return rec[IE_SAMPLING_INTERVAL]
    if rec.get(IE_SAMPLER_RANDOM_INTERVAL):
        return rec[IE_SAMPLER_RANDOM_INTERVAL]
    interval = rec.get(IE_SAMPLING_PACKET_INTERVAL)
    if interval:
        return max(1, round((interval + rec.get(IE_SAMPLING_PACKET_SPACE, 0)) / interval))
    size = rec.get(IE_SAMPLING_SIZE)
    if size:
        return max(1, round(rec.get(IE_SAMPLING_POPULATION, size) / size))
    return None


def _cut_variable(body: bytes, t: Template) -> list[bytes]:
    """Cut records of a template with variable-length fields, keeping the fixed fields."""
    out: list[bytes] = []
    off = 0
    n = len(body)
    while off < n:
        parts: list[bytes] = []
        ok = True
        for _, length, _ in t.fields:
            if length == VARLEN:
                if off >= n:
                    ok = False
                    break
                ln = body[off]
                off += 1
                if ln == 255:
                    if off + 2 > n:
                        ok = False
                        break
                    ln = int.from_bytes(body[off : off + 2], "big")
                    off += 2
                off += ln
            elif length:
                parts.append(body[off : off + length])
                off += length
        if not ok or off > n:
            break
        out.append(b"".join(parts))
        if n - off < t.record_length:
            break
    return out


def _context(group: list[_Stashed], counts: list[int]) -> dict[str, np.ndarray]:
    names: dict[str, int] = {}
    ex_idx = [names.setdefault(s.key[0], len(names)) for s in group]
    c = np.asarray(counts, dtype=np.int64)
    return {
        "export_ms": np.repeat(np.asarray([s.export_ms for s in group], dtype=np.int64), c),
        "base_ms": np.repeat(np.asarray([s.base_ms for s in group], dtype=np.int64), c),
        "time_mode": np.repeat(np.asarray([s.time_mode for s in group], dtype=np.int8), c),
        "sampling": np.repeat(np.asarray([s.sampling for s in group], dtype=np.int64), c),
        "exporter": np.repeat(np.asarray(ex_idx, dtype=np.int32), c),
        "exporter_names": np.asarray(list(names), dtype=object),
    }


def _ms_from_ms(v: np.ndarray) -> np.ndarray:
    return v.astype(np.int64)


def _ms_from_s(v: np.ndarray) -> np.ndarray:
    return v.astype(np.int64) * 1000


def _ms_from_ntp(v: np.ndarray) -> np.ndarray:
    secs = (v >> np.uint64(32)).astype(np.int64) - NTP_EPOCH_OFFSET_S
    frac = (v & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2**32
    return secs * 1000 + (frac * 1000).astype(np.int64)


def _empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=FLOWS)


# --------------------------------------------------------------------------- files
def split_datagrams(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """Cut a file of raw concatenated export datagrams into ``(offset, datagram)``.

    v5 datagrams end after ``24 + 48 * count`` bytes, IPFIX messages carry their length, and
    a v9 datagram ends where the next 16-bit set id is not a valid one (0, 1 or >= 256), since
    a following header starts with its version (5, 9 or 10). Bytes that fit no header are
    yielded as one chunk so that the decoder counts and quarantines them.
    """
    off = 0
    n = len(buf)
    while off < n:
        end = _datagram_end(buf, off)
        if end is None:
            nxt = _resync(buf, off + 1)
            yield off, buf[off:nxt]
            off = nxt
            continue
        yield off, buf[off:end]
        off = end


def _datagram_end(buf: bytes, off: int) -> int | None:
    n = len(buf)
    if n - off < 4:
        return None
    version = int.from_bytes(buf[off : off + 2], "big")
    if version == 5:
        if n - off < V5_HEADER.size:
            return None
        count = int.from_bytes(buf[off + 2 : off + 4], "big")
        return min(n, off + V5_HEADER.size + count * V5_RECORD.itemsize)
    if version == 10:
        length = int.from_bytes(buf[off + 2 : off + 4], "big")
        if length < IPFIX_HEADER.size:
            return None
        return min(n, off + length)
    if version == 9:
        if n - off < V9_HEADER.size:
            return None
        secs = int.from_bytes(buf[off + 8 : off + 12], "big")
        source = buf[off + 16 : off + 20]
        pos = off + V9_HEADER.size
        while n - pos >= 4:
            set_id = int.from_bytes(buf[pos : pos + 2], "big")
            set_len = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            if 1 < set_id < 256 or set_len < 4:
                break
            end = min(n, pos + set_len)
            # A damaged set length must not swallow the datagrams that follow it.
            cut = _next_v9_header(buf, pos + 4, end, secs, source)
            if cut is not None:
                return cut
            pos = end
        return pos if n - pos >= 4 else n
    return None


def _next_v9_header(buf: bytes, start: int, end: int, secs: int, source: bytes) -> int | None:
    """Offset of a v9 header from the same exporter (same source id, time within a day)
    inside ``buf[start:end]``, if any."""
    pos = buf.find(b"\x00\x09", start, end)
    while pos != -1:
        if len(buf) - pos >= V9_HEADER.size + 4 and buf[pos + 16 : pos + 20] == source:
            t = int.from_bytes(buf[pos + 8 : pos + 12], "big")
            set_id = int.from_bytes(buf[pos + 20 : pos + 22], "big")
            if abs(t - secs) <= 86_400 and (set_id in (0, 1) or set_id >= 256):
                return pos
        pos = buf.find(b"\x00\x09", pos + 1, end)
    return None


def _resync(buf: bytes, start: int) -> int:
    """Next offset where a plausible export header begins (or the end of the buffer)."""
    best = len(buf)
    for marker in (b"\x00\x05", b"\x00\x09", b"\x00\x0a"):
        pos = buf.find(marker, start)
        while pos != -1 and pos < best:
            if _datagram_end(buf, pos) is not None and _plausible(buf, pos):
                best = pos
                break
            pos = buf.find(marker, pos + 1)
    return best


def _plausible(buf: bytes, off: int) -> bool:
    version = int.from_bytes(buf[off : off + 2], "big")
    if version == 9 and len(buf) - off >= V9_HEADER.size + 4:
        set_id = int.from_bytes(buf[off + 20 : off + 22], "big")
        return set_id in (0, 1) or set_id >= 256
    if version == 10 and len(buf) - off >= IPFIX_HEADER.size + 4:
        set_id = int.from_bytes(buf[off + 16 : off + 18], "big")
        return set_id in (2, 3) or set_id >= 256
    return version == 5


def _pcap_payloads(path: Path) -> Iterator[tuple[float, str, bytes]]:
    """UDP payloads of a pcap/pcapng with the sender address: (ts, exporter, payload)."""
    import dpkt

    with path.open("rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        try:
            reader: Any = (
                dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
            )
        except (ValueError, dpkt.dpkt.NeedData) as exc:
            raise InputError(f"not a readable capture: {exc}", path=path) from exc
        link = reader.datalink()
        for ts, frame in reader:
            try:
                ip: Any
                if link == dpkt.pcap.DLT_EN10MB:
                    ip = dpkt.ethernet.Ethernet(frame).data
                elif link == dpkt.pcap.DLT_LINUX_SLL:
                    ip = dpkt.sll.SLL(frame).data
                elif link in (dpkt.pcap.DLT_RAW, 101, 228, 229):
                    ip = dpkt.ip.IP(frame) if frame and frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)
                elif link == dpkt.pcap.DLT_NULL or link == dpkt.pcap.DLT_LOOP:
                    ip = dpkt.loopback.Loopback(frame).data
                else:
                    continue
            except (dpkt.dpkt.UnpackError, IndexError, ValueError):
                continue
            udp = getattr(ip, "data", None)
            if not isinstance(udp, dpkt.udp.UDP):
                continue
            if isinstance(ip, dpkt.ip.IP):
                exporter = str(ipaddress.IPv4Address(ip.src))
            else:
                exporter = str(ipaddress.IPv6Address(ip.src))
            yield float(ts), exporter, bytes(udp.data)


def _is_capture(head: bytes) -> bool:
    return head[:4] in (
        b"\xd4\xc3\xb2\xa1",
        b"\xa1\xb2\xc3\xd4",
        b"\x4d\x3c\xb2\xa1",
        b"\xa1\xb2\x3c\x4d",
        b"\x0a\x0d\x0d\x0a",
    )


def looks_like_export(head: bytes) -> bool:
    """True when ``head`` starts like a capture file or a raw NetFlow/IPFIX datagram."""
    if _is_capture(head):
        return True
    return len(head) >= 4 and _datagram_end(head, 0) is not None and _plausible(head, 0)


def iter_datagrams(path: str | Path, exporter: str | None = None) -> Iterator[tuple[str, bytes]]:
    """Export datagrams of a capture or raw file, as ``(exporter, datagram)``.

    In a capture, UDP payloads that do not start with an export version (5, 9, 10) are
    still yielded, so the decoder counts them as rejected rather than losing them silently;
    only non-UDP packets are passed over.
    """
    p = Path(path)
    try:
        head = p.open("rb").read(4)
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=p) from exc
    if _is_capture(head):
        for _, sender, payload in _pcap_payloads(p):
            yield exporter or sender, payload
        return
    buf = p.read_bytes()
    name = exporter or p.name
    for _, dgram in split_datagrams(buf):
        yield name, dgram


def decode_datagrams(
    datagrams: Iterable[tuple[str, bytes]],
    decoder: NetflowDecoder,
    *,
    batch_datagrams: int = 2048,
) -> Iterator[pa.RecordBatch]:
    """Feed datagrams to ``decoder``; yield FLOWS batches every ``batch_datagrams``."""
    for n, (exporter, dgram) in enumerate(datagrams, 1):
        decoder.feed(dgram, exporter)
        if n % batch_datagrams == 0:
            batch = decoder.take()
            if batch.num_rows:
                yield batch
    batch = decoder.finish()
    if batch.num_rows:
        yield batch


def read_netflow(
    path: str | Path,
    *,
    quarantine: Quarantine | None = None,
    exporter: str | None = None,
) -> IngestResult:
    """Read a pcap/pcapng of export packets, or raw concatenated datagrams, into FLOWS.

    ``exporter`` names the exporter for raw files (default: the file name); in captures the
    sender's IP address is the exporter unless ``exporter`` is given.
    """
    q = quarantine if quarantine is not None else Quarantine()
    dec = NetflowDecoder(q)
    batches = list(decode_datagrams(iter_datagrams(path, exporter), dec))
    flows = pa.Table.from_batches(batches, schema=FLOWS)
    s = dec.stats
    return IngestResult(
        format="netflow",
        flows=flows,
        dns=DNS.empty_table(),
        read=s.flows_decoded + s.sets_expired + s.datagrams_rejected,
        accepted=s.flows_accepted,
        rejected=s.flows_rejected + s.sets_expired + s.datagrams_rejected,
        details=s.as_dict(),
    )
