"""Documentation shared by the modules that read a Ray cluster from its head (ray_cluster_info,
ray_cluster_check): their connection options and attributes, written once, as ansible-core shares
documentation between modules (extends_documentation_fragment)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  address:
    description: The cluster's GCS address, C(HEAD_IP:PORT).
    type: str
    required: true
  python:
    description: Python of the node's Ray virtual environment (it must match the cluster's Ray and Python).
    type: path
    required: true
  token_file:
    description: File holding the cluster's auth token; passed to Ray as C(RAY_AUTH_TOKEN_PATH), never read here.
    type: path
  probe_tasks:
    description: Run a zero-CPU task on every alive node to read its versions and prove it runs work.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
requirements:
  - Ray and the bittrader_node_agent package in the virtual environment named by I(python).
"""
