"""Node state on disk: the node file, a small database that many commands share.

``kproxy --node FILE iptables -A ...`` followed by ``kproxy --node FILE trace ...`` behave like two
commands on one host: each opens the node file (``session``), reads what it touches, and a
successful writer commits what changed (``database``). Old JSON node files still load and are
rewritten as databases on their first change; the same JSON is the export format (``jsonfile``).
"""

from kproxy.store.jsonfile import node_from_json, node_to_json
from kproxy.store.lock import LockBusy, NodeFileError, Wait, iptables_wait
from kproxy.store.session import NodeSession, Retry, load_node, save_node

__all__ = ["LockBusy", "NodeFileError", "NodeSession", "Retry", "Wait", "iptables_wait", "load_node",
           "node_from_json", "node_to_json", "save_node"]
