"""Simulators and rigs for tests: a loopback mining pool, a real-miner runner, a capture helper.

Everything here talks only to loopback addresses. The pieces:

- :mod:`minewatch.lab.pool`: an asyncio test mining pool (CryptoNote/XMRig and Stratum V1)
  that records what it saw;
- :mod:`minewatch.lab.stratum_client`: a scripted Stratum V1 client (not a miner);
- :mod:`minewatch.lab.xmrig`: runs the real XMRig binary, time-bounded, against the lab pool;
- :mod:`minewatch.lab.capture`: runs ``tcpdump`` on ``lo`` around a run.
"""
