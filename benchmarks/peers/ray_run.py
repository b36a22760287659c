"""How both Ray Serve peers run (``ray_server``, the TensorFlow extra; ``ray_oip_server``, the OIP
peer): Ray on the CPUs this process may use, one deployment served at ``/`` until SIGTERM or
Ctrl-C, then Serve and Ray shut down."""

from __future__ import annotations

import os
import signal
import sys

import ray
from ray import serve

OBJECT_STORE_BYTES = 256 * 1024 * 1024


def serve_until_stopped(deployment, host: str, port: int) -> int:
    """Start Ray and Serve, run ``deployment`` (a bound application) at ``/`` on ``host:port``,
    say it is ready, and wait; 0 once stopped."""
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after ray.init, which sets its own
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment, route_prefix="/")
        print(f"Ray Serve ready on http://{host}:{port}", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
