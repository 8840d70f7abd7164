"""Bittrader node agent: the programs every Ray node of the cluster runs, in one package installed
into the node's Ray virtual environment (a pure wheel built on the admin machine).

    bittrader-node      the node supervisor (supervisor.py): runs `ray start --block` for a service manager
    bittrader-throttle  the smart CPU throttle of a worker (throttle/)
    bittrader-health    the head's cluster health record (health.py)
    bittrader-notify    the macOS owner's notifications (notify.py)
    bittrader-verify    the on-node check behind verify_worker.sh (verify.py)

Each also runs as `python -m bittrader_node_agent.<module>`. Standard library and psutil only.
This file imports nothing (Ansible packs it with throttle/config.py for the ray_throttle_daemon module).
"""
