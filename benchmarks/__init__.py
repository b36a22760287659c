"""Benchmarks: the in-process ceiling (``raw``), the Locust load runner (``load``), peer servers.

See benchmarks/README.md. Nothing here is imported by ``service`` or ``training``.
"""
