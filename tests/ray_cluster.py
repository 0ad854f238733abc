"""A local Ray cluster of two nodes for ``tests/test_ray.py``, made and torn down with Ray's own means
(``ray.cluster_utils.Cluster``), each node with one CPU, so that two replicas of one CPU each must go one to a
node. Run with a Python that has Ray: prints the head's address, then holds the cluster until its standard input
closes or SIGTERM comes, and shuts it down (every process it started)."""

import signal
import sys
import threading

from ray.cluster_utils import Cluster


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    cluster.shutdown()


if __name__ == "__main__":
    main()
