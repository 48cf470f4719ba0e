"""A live NetFlow v5/v9 and IPFIX collector over UDP.

:class:`FlowCollector` receives export datagrams on one UDP socket inside an asyncio loop,
decodes them with :class:`minewatch.sources.netflow.NetflowDecoder` (templates per exporter
and observation domain), writes the flows to the Parquet store in rolling files, and hands
every new FLOWS batch to a *detector hook*. It keeps serving whatever arrives: a datagram that
cannot be decoded is counted and quarantined, and even an unexpected error inside the decoder
is counted (``errors``) and quarantined rather than stopping the loop.

The detector hook (:data:`Detector`) is the extension point for sliding-window detection: a
callable that receives each new FLOWS record batch and returns detection dicts (the JSON Lines
contract of DESIGN.md); the collector prints each as one JSON line on stdout as soon as it is
returned. :func:`passthrough` is the default and reports nothing.

Counters are exposed as Prometheus metrics (``prometheus-client``), read from the decoder at
scrape time so that the receive path pays nothing for them. Kernel drops of the UDP socket
(datagrams the collector never saw because its buffer was full) are read from
``/proc/net/udp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from minewatch.errors import Quarantine
from minewatch.sources.flowstore import write_flows
from minewatch.sources.netflow import NetflowDecoder

Detector = Callable[[pa.RecordBatch], Iterable[dict[str, Any]]]
"""A sliding-window detector: gets each new FLOWS batch, returns detections (may be none)."""


def passthrough(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """The default detector hook: looks at nothing, reports nothing."""
    return []


def parse_hostport(text: str, default_port: int | None = 2055) -> tuple[str, int]:
    """``"127.0.0.1:2055"``, ``"[::1]:2055"``, ``":2055"``, ``"host"`` or a bare IPv6 address
    (the port then ``default_port``). With ``default_port=None`` a port is required.
    :class:`ValueError` for a missing or non-numeric port or one outside 1-65535."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
        host = host or "127.0.0.1"
    else:  # a host name, an IPv4 address or a bare IPv6 address: no port
        host, port = text, ""
    if not port and default_port is not None:
        return host or "127.0.0.1", default_port
    if not host or not port:
        raise ValueError(f"not HOST:PORT: {text!r} (e.g. 203.0.113.7:3333 or [2001:db8::1]:443)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class UdpSocket:
    """One row of ``/proc/net/udp`` (or ``udp6``): local address as the kernel writes it
    (``0100007F:0801`` is 127.0.0.1:2049), bytes waiting to be read, inode, drops."""

    local: str
    rx_queue: int
    inode: str
    drops: int


def udp_sockets() -> Iterator[UdpSocket]:
    """The machine's UDP sockets, from ``/proc/net/udp`` and ``/proc/net/udp6``."""
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(name, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    parts = line.split()
                    if len(parts) >= 13:
                        rx = int(parts[4].split(":")[1], 16)
                        yield UdpSocket(parts[1], rx, parts[9], int(parts[12]))
        except OSError:
            continue


def kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this socket (``drops`` column of /proc/net/udp)."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return 0
    return next((u.drops for u in udp_sockets() if u.inode == inode), 0)


@dataclass
class RollingWriter:
    """Buffers FLOWS batches and writes them to the store every ``roll_s`` or ``roll_rows``."""

    out: Path | None
    roll_s: float = 60.0
    roll_rows: int = 500_000
    files_written: int = 0
    rows_written: int = 0
    _batches: list[pa.RecordBatch] = field(default_factory=list)
    _rows: int = 0
    _since: float = field(default_factory=time.monotonic)

    def add(self, batch: pa.RecordBatch) -> None:
        if self.out is None or batch.num_rows == 0:
            return
        self._batches.append(batch)
        self._rows += batch.num_rows
        if self._rows >= self.roll_rows:
            self.roll()

    def due(self) -> bool:
        return bool(self._batches) and time.monotonic() - self._since >= self.roll_s

    def roll(self) -> None:
        self._since = time.monotonic()
        if self.out is None or not self._batches:
            return
        table = pa.Table.from_batches(self._batches)
        self._batches, self._rows = [], 0
        self.files_written += len(write_flows(table, self.out))
        self.rows_written += table.num_rows


class _Metrics(Collector):
    """Prometheus view of a running collector, computed when scraped."""

    def __init__(self, owner: FlowCollector) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        o = self.owner
        s = o.decoder.stats
        prefix = "minewatch_collector_"

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(prefix + name, doc, value=value)

        yield counter("received_datagrams", "Export datagrams received", o.received)
        yield counter("received_bytes", "Bytes of export datagrams received", o.received_bytes)
        yield counter("decoded_datagrams", "Datagrams decoded in full", s.datagrams_decoded)
        yield counter("decoded_flows", "Flow records decoded and accepted", s.flows_accepted)
        dropped = CounterMetricFamily(
            prefix + "dropped", "Data lost before decoding, by reason", labels=["reason"]
        )
        dropped.add_metric(["kernel_buffer"], o.kernel_drops())
        dropped.add_metric(["backlog_full"], o.backlog_dropped)
        dropped.add_metric(["template_never_arrived"], s.sets_expired)
        dropped.add_metric(["rejected_datagram"], s.datagrams_rejected)
        dropped.add_metric(["rejected_flow"], s.flows_rejected)
        yield dropped
        yield counter("quarantined", "Records and datagrams sent to quarantine", o.quarantine.total)
        yield counter(
            "exporter_sequence_lost", "Lost according to export sequence numbers", s.sequence_lost
        )
        yield counter(
            "exporter_sequence_backwards",
            "Export sequences that went backwards",
            s.sequence_backwards,
        )
        yield counter("templates_received", "Template records received", s.templates_received)
        yield counter("template_redefinitions", "Templates redefined", s.template_redefinitions)
        yield counter("errors", "Unexpected decoder errors survived", o.errors)
        yield counter("detections", "Detections reported by the detector hook", o.detections)
        yield counter("written_flows", "Flow rows written to the store", o.writer.rows_written)
        yield GaugeMetricFamily(
            prefix + "templates", "Templates currently known", value=o.decoder.template_count
        )
        yield GaugeMetricFamily(
            prefix + "held_sets", "Data sets waiting for their template", value=o.decoder.held_sets
        )
        yield GaugeMetricFamily(
            prefix + "backlog", "Datagrams received and not yet decoded", value=len(o._backlog)
        )


class FlowCollector:
    """UDP NetFlow/IPFIX collector; see the module docstring.

    Use :meth:`run` inside an event loop (stops when ``stop`` is set), or :func:`serve` from a
    command line.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2055,
        *,
        out: str | Path | None = None,
        quarantine: Quarantine | None = None,
        detector: Detector = passthrough,
        emit: TextIO | None = None,
        flush_s: float = 0.5,
        roll_s: float = 60.0,
        roll_rows: int = 500_000,
        rcvbuf: int = 32 * 1024 * 1024,
        max_backlog: int = 1_000_000,
        batch_sets: int = 128,
    ) -> None:
        self.host, self.port = host, port
        self.quarantine = quarantine if quarantine is not None else Quarantine()
        self.decoder = NetflowDecoder(self.quarantine, source="collector")
        self.detector = detector
        self.emit = emit if emit is not None else sys.stdout
        self.flush_s = flush_s
        self.writer = RollingWriter(Path(out) if out is not None else None, roll_s, roll_rows)
        self.rcvbuf = rcvbuf
        self.received = 0
        self.received_bytes = 0
        self.errors = 0
        self.detections = 0
        self.registry = CollectorRegistry()
        self.registry.register(_Metrics(self))
        self.sock: socket.socket | None = None
        self.max_backlog = max_backlog
        # Decode in batches of this many data sets (about 4,000 flows from softflowd), so
        # that no single batch holds the GIL for long while datagrams keep arriving.
        self.batch_sets = batch_sets
        self.backlog_dropped = 0
        self._backlog: deque[tuple[bytes, str]] = deque()
        self._stopping = threading.Event()
        self._last_flush = time.monotonic()

    # ----------------------------------------------------------------- socket
    def bind(self) -> tuple[str, int]:
        """Open the UDP socket (port 0 picks a free one); returns the bound address."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
            if opt is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, self.rcvbuf)
                break
            except OSError:
                continue
        sock.bind((self.host, self.port))
        sock.settimeout(0.2)
        self.sock = sock
        addr = sock.getsockname()
        self.port = int(addr[1])
        return str(addr[0]), self.port

    def kernel_drops(self) -> int:
        return kernel_drops(self.sock) if self.sock is not None else 0

    def start_metrics(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])

    # ----------------------------------------------------------------- receive path
    def _receive(self) -> None:
        """Receiver thread: move datagrams from the socket to the backlog, nothing else.

        Kept apart from decoding so that a slow batch (decoding, writing Parquet, a detector)
        never leaves datagrams to overflow the kernel's socket buffer; blocking in ``recv``
        releases the GIL, so it costs the decoder nothing while idle.
        """
        sock = self.sock
        if sock is None:
            return
        backlog = self._backlog
        while not self._stopping.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                self.errors += 1
                continue
            if len(backlog) >= self.max_backlog:
                self.backlog_dropped += 1
                continue
            backlog.append((data, addr[0]))

    def pump(self) -> int:
        """Decode-side step: feed every datagram in the backlog; flush when due."""
        backlog = self._backlog
        feed = self.decoder.feed
        n = len(backlog)
        for _ in range(n):
            data, exporter = backlog.popleft()
            self.received += 1
            self.received_bytes += len(data)
            try:
                feed(data, exporter)
            except Exception as exc:  # keep serving whatever a datagram does to the decoder
                self.errors += 1
                self.quarantine.reject(
                    "collector", exporter, f"decoder error {type(exc).__name__}: {exc}", data
                )
        if (
            self.decoder.ready_sets >= self.batch_sets
            or time.monotonic() - self._last_flush >= self.flush_s
        ):
            self.flush()
        return n

    def flush(self) -> int:
        """Decode what is ready, write it, run the detector hook. Returns rows decoded."""
        self._last_flush = time.monotonic()
        try:
            batch = self.decoder.take()
        except Exception as exc:
            self.errors += 1
            self.quarantine.reject(
                "collector", "flush", f"decoder error {type(exc).__name__}: {exc}"
            )
            return 0
        if batch.num_rows:
            self.writer.add(batch)
            self._detect(batch)
        if self.writer.due():
            self.writer.roll()
        return batch.num_rows

    def _detect(self, batch: pa.RecordBatch) -> None:
        try:
            found = list(self.detector(batch))
        except Exception as exc:
            self.errors += 1
            self.quarantine.reject(
                "collector", "detector", f"detector error {type(exc).__name__}: {exc}"
            )
            return
        for det in found:
            self.detections += 1
            self.emit.write(json.dumps(det, default=str, ensure_ascii=False) + "\n")
        if found:
            self.emit.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; then decode, write and report what is left."""
        if self.sock is None:
            self.bind()
        self._stopping.clear()
        receiver = threading.Thread(target=self._receive, name="collector-recv", daemon=True)
        receiver.start()
        try:
            while not stop.is_set():
                if not self.pump():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.005)
                else:
                    await asyncio.sleep(0)
        finally:
            self._stopping.set()
            receiver.join(timeout=2)
            self.pump()
            self.close()

    def close(self) -> None:
        """Decode the rest, reject sets still waiting for templates, write and close."""
        try:
            batch = self.decoder.finish()
            if batch.num_rows:
                self.writer.add(batch)
                self._detect(batch)
        finally:
            self.writer.roll()
            self.quarantine.close()

    def counters(self) -> dict[str, int]:
        s = self.decoder.stats
        return {
            "received": self.received,
            "decoded": s.flows_accepted,
            "dropped": self.kernel_drops() + self.backlog_dropped + s.sets_expired,
            "quarantined": self.quarantine.total,
            "templates": self.decoder.template_count,
            "errors": self.errors,
            "detections": self.detections,
        }


def serve(
    collector: FlowCollector,
    *,
    metrics: tuple[str, int] | None = None,
    duration_s: float | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Run ``collector`` until SIGINT/SIGTERM (or ``duration_s``); return its counters."""

    # The receiver thread needs the GIL back quickly after each datagram; the default 5 ms
    # switch interval lets a decoding batch keep it long enough to overflow a small buffer.
    # Restored on return: a caller in the same process (a test, an embedding service) keeps
    # its own.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        if duration_s is not None:
            loop.call_later(duration_s, stop.set)
        host, port = collector.bind()
        info: dict[str, Any] = {"listen": f"{host}:{port}"}
        if metrics is not None:
            info["metrics"] = f"{metrics[0]}:{collector.start_metrics(*metrics)}"
        if on_ready is not None:
            on_ready(info)
        await collector.run(stop)

    try:
        asyncio.run(main())
    finally:
        sys.setswitchinterval(switch)
    return collector.counters()
