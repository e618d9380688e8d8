"""The real kernel as a proxier backend: iptables-restore, iptables -C/-I/-D in the current namespace.

kproxy owns only its own chains (``KUBE-*``) and the jump rules it inserts into built-in chains:
restores always use ``--noflush`` and name only kproxy's chains, and ``cleanup`` removes exactly
those, so a user's rules in any table survive. ``netns`` runs every command inside that network
namespace (``ip netns exec``), which is how tests and the lab use it without touching the host.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence

from kproxy.backends import BackendError
from kproxy.proxy.virtualserver import VirtualServer

TABLES = ("filter", "nat", "mangle", "raw")
_IPVS_PROTOS = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}
# iptables-nft-restore --noflush fetches the rules of each chain the input names with a dump of its
# own, and the kernel walks the table's chains for each: quadratic in the number of chains (491 s
# for a first sync of 10,000 Services). A chain-less read command (``-S``) in a table's section makes
# it fetch the table's rules in one dump instead. Worth it from this many declared chains on; below,
# printing the table would cost more than the dumps (a one-endpoint change declares a handful).
ONE_DUMP_CHAINS = 200
# Chains with kproxy's prefix that belong to the kubelet: upstream's CleanupLeftovers removes only
# kube-proxy's own chains, so KUBE-FIREWALL (and the INPUT/OUTPUT jumps into it), the kubelet's
# canary and its old KUBE-MARK-DROP stay. ("*" matches every table.)
KUBELET_CHAINS = frozenset({("filter", "KUBE-FIREWALL"), ("nat", "KUBE-MARK-DROP"), ("*", "KUBE-KUBELET-CANARY")})


def kubelet_owned(table: str, chain: str) -> bool:
    """Whether ``chain`` of ``table`` is the kubelet's (cleanup leaves it and the jumps into it)."""
    return (table, chain) in KUBELET_CHAINS or ("*", chain) in KUBELET_CHAINS


class KernelBackend:
    def __init__(self, family: int = 4, legacy: bool = False, netns: str | None = None) -> None:
        self.family = family
        self.legacy = legacy
        self.netns = netns
        base = "iptables" if family == 4 else "ip6tables"
        suffix = "-legacy" if legacy else "-nft"
        self.iptables = self._tool(base + suffix, base)
        self.iptables_restore = self._tool(f"{base}{suffix}-restore", f"{base}-restore")
        self.iptables_save = self._tool(f"{base}{suffix}-save", f"{base}-save")
        self._random_fully: bool | None = None

    @staticmethod
    def _tool(preferred: str, fallback: str) -> str:
        return shutil.which(preferred) or shutil.which(fallback) or fallback

    def _run(self, argv: Sequence[str], input: str | None = None,
             keep_stdout: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run([*prefix, *argv], input=input, text=True, timeout=1800, stderr=subprocess.PIPE,
                              stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL)

    def restore(self, text: str, noflush: bool = True, counters: bool = False) -> None:
        """``iptables-restore --noflush``: only the chains ``text`` names change, other writers' rules
        stay as they are (the tool's own transaction; nothing is read and written back)."""
        args = [self.iptables_restore, "-w"]
        if noflush:
            args.append("--noflush")
        if counters:
            args.append("--counters")
        one_dump = noflush and not self.legacy and text.count("\n:") >= ONE_DUMP_CHAINS
        if one_dump:
            text = one_dump_input(text)
        proc = self._run(args, input=text, keep_stdout=not one_dump)
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip() or f"iptables-restore failed ({proc.returncode})")

    def chain_names(self, table: str) -> list[str]:
        """The chains of ``table``: from ``nft list chains`` on iptables-nft (no rules are read, which
        iptables-save would print by the hundred thousand), else from iptables-save."""
        nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
        if self.legacy or nft is None:
            return [line[1:].split()[0] for line in self.save(table).splitlines() if line.startswith(":")]
        proc = self._run([nft, "list", "chains", "ip" if self.family == 4 else "ip6"])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip())
        return nft_chain_names(proc.stdout, table)

    def save(self, table: str) -> str:
        proc = self._run([self.iptables_save, "-t", table])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip())
        return proc.stdout

    def _ipt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([self.iptables, "-w", *args])

    def ensure_chain(self, table: str, chain: str) -> bool:
        proc = self._ipt("-t", table, "-N", chain)
        if proc.returncode == 0:
            return False
        if "exists" in proc.stderr:
            return True
        raise BackendError(proc.stderr.strip())

    def chain_rules(self, table: str, chain: str) -> list[str]:
        """``iptables -S CHAIN``: the chain's rules in save form ([] for a chain that does not exist)."""
        proc = self._ipt("-t", table, "-S", chain)
        return proc.stdout.splitlines() if proc.returncode == 0 else []

    def check_rule(self, table: str, chain: str, args: list[str]) -> bool:
        """``iptables -C``: whether the rule exists (reads only)."""
        return self._ipt("-t", table, "-C", chain, *args).returncode == 0

    def ensure_rule(self, table: str, chain: str, args: list[str], prepend: bool = True) -> bool:
        if self.check_rule(table, chain, args):
            return True
        proc = self._ipt("-t", table, "-I" if prepend else "-A", chain, *args)
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip())
        return False

    def delete_rule(self, table: str, chain: str, args: list[str]) -> bool:
        return self._ipt("-t", table, "-D", chain, *args).returncode == 0

    def has_random_fully(self) -> bool:
        """Whether this iptables knows ``MASQUERADE --random-fully``: version 1.6.2 or newer, the
        probe upstream's utiliptables makes."""
        if self._random_fully is None:
            m = re.search(r"v(\d+)\.(\d+)\.(\d+)", self._ipt("--version").stdout)
            self._random_fully = m is not None and tuple(map(int, m.groups())) >= (1, 6, 2)
        return self._random_fully

    def _nfacct(self, op: str, name: str) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, "-m", "kproxy.backends.kernel_nfacct", op, name])

    def nfacct_ensure(self, name: str) -> bool:
        """Create the kernel's accounting object; False where the kernel has no nfnetlink_acct."""
        return self._nfacct("ensure", name).returncode == 0

    def nfacct_packets(self, name: str) -> int | None:
        proc = self._nfacct("get", name)
        return int(proc.stdout.split()[1]) if proc.returncode == 0 else None

    def delete_chain(self, table: str, chain: str) -> bool:
        self._ipt("-t", table, "-F", chain)
        return self._ipt("-t", table, "-X", chain).returncode == 0

    def set_sysctl(self, name: str, value: int) -> None:
        """Set a sysctl of this network namespace (``net/ipv4/conf/all/route_localnet``, upstream's
        slash form, or dotted), writing only when it differs, as upstream's EnsureSysctl does."""
        dotted = name.replace("/", ".")
        now = self._run(["sysctl", "-n", dotted])
        if now.returncode == 0 and now.stdout.strip() == str(value):
            return
        proc = self._run(["sysctl", "-qw", f"{dotted}={value}"])
        if proc.returncode != 0:
            raise BackendError(f"cannot set sysctl {dotted}={value}: "
                               f"{proc.stderr.strip() or f'sysctl exited {proc.returncode}'}")

    def ipvs_unavailable(self) -> str:
        """Why the IPVS mode cannot run in this namespace ("" when it can). Only looks: loading a
        module or creating anything is left to the administrator."""
        if self._run(["test", "-e", "/proc/net/ip_vs"]).returncode == 0:
            return ""
        return ("this kernel has no IPVS (no /proc/net/ip_vs: the ip_vs module is not loaded or not built); "
                "load it with 'modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack' or use --mode iptables")

    def ipset_restore(self, text: str) -> None:
        """``ipset restore -exist``: the ipsets of kube-proxy's IPVS mode (they work without IPVS)."""
        proc = self._run(["ipset", "restore", "-exist"], input=text)
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip() or f"ipset restore failed ({proc.returncode})")

    def ipset_entries(self, name: str) -> set[str]:
        """The members of set ``name`` (empty if there is no such set)."""
        proc = self._run(["ipset", "list", name])
        if proc.returncode != 0:
            return set()
        text = proc.stdout.split("Members:\n", 1)
        return {line.split()[0] for line in text[1].splitlines() if line.strip()} if len(text) == 2 else set()

    def ipset_names(self) -> list[str]:
        proc = self._run(["ipset", "list", "-n"])
        return proc.stdout.split() if proc.returncode == 0 else []

    def ipset_destroy(self, name: str) -> bool:
        return self._run(["ipset", "destroy", name]).returncode == 0

    def delete_device(self, name: str) -> bool:
        return self._run(["ip", "link", "del", name]).returncode == 0

    def device_addresses(self, dev: str) -> set[str]:
        proc = self._run(["ip", "-j", f"-{self.family}", "addr", "show", "dev", dev])
        if proc.returncode != 0:
            return set()
        return {a["local"] for link in json.loads(proc.stdout or "[]") for a in link.get("addr_info", [])}

    def ipvs_services(self) -> list[VirtualServer]:
        """This family's virtual servers, from ``ipvsadm -Sn`` (only asked where the kernel has IPVS)."""
        proc = self._run(["ipvsadm", "-Sn"])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip() or "ipvsadm -Sn failed")
        out = []
        for line in proc.stdout.splitlines():
            words = line.split()
            if len(words) < 3 or words[0] != "-A" or words[1] not in _IPVS_PROTOS:
                continue
            host, _, port = words[2].rpartition(":")
            host = host.strip("[]")
            if (":" in host) == (self.family == 6):
                sched = words[words.index("-s") + 1] if "-s" in words else "wlc"
                out.append(VirtualServer(host, _IPVS_PROTOS[words[1]], int(port), sched))
        return out

    def ipvs_delete_service(self, vs: VirtualServer) -> None:
        flag = {v: k for k, v in _IPVS_PROTOS.items()}[vs.protocol]
        proc = self._run(["ipvsadm", "-D", flag, str(vs)[: str(vs).rindex("/")]])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip() or f"ipvsadm -D {vs} failed")

    def save_all(self) -> str:
        proc = self._run([self.iptables_save])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip())
        return proc.stdout

    def cleanup(self, prefix: str = "KUBE-") -> int:
        """Remove kproxy's chains and jump rules, nothing else; returns how many lines that took."""
        text = owned_cleanup_input(self.save_all(), prefix)
        if text:
            self.restore(text, noflush=True)
        return text.count("\n")


def owned_cleanup_input(save_text: str, prefix: str = "KUBE-") -> str:
    """A ``--noflush`` restore input that removes every ``prefix`` chain and every rule jumping to one,
    except the kubelet's chains (see KUBELET_CHAINS) and the jumps into them.

    Built from ``iptables-save`` output so that nothing else in the tables is touched.
    """
    out: list[str] = []
    table: str | None = None
    chains: list[str] = []
    deletes: list[str] = []
    for line in save_text.splitlines():
        if line.startswith("*"):
            table, chains, deletes = line[1:], [], []
        elif line.startswith(":") and table:
            name = line[1:].split()[0]
            if name.startswith(prefix) and not kubelet_owned(table, name):
                chains.append(name)
        elif line.startswith("-A ") and table:
            words = line.split()
            chain = words[1]
            target = words[words.index("-j") + 1] if "-j" in words else words[words.index("-g") + 1] \
                if "-g" in words else ""
            kept = not chain.startswith(prefix) or kubelet_owned(table, chain)
            if kept and target.startswith(prefix) and not kubelet_owned(table, target):
                deletes.append("-D" + line[2:])
        elif line == "COMMIT" and table:
            if chains or deletes:
                out.append(f"*{table}")
                out.extend(deletes)
                out.extend(f":{c} - [0:0]" for c in chains)
                out.extend(f"-X {c}" for c in chains)
                out.append("COMMIT")
            table = None
    return "\n".join(out) + "\n" if out else ""


def one_dump_input(text: str) -> str:
    """``text`` with ``-S`` opening each table's section: the restore then reads each table's rules
    in one dump (see ONE_DUMP_CHAINS). ``-S`` only prints; the caller discards what it prints."""
    return "".join(line + "-S\n" if line.startswith("*") else line for line in text.splitlines(keepends=True))


def nft_chain_names(listing: str, table: str) -> list[str]:
    """The chain names of ``table`` in ``nft list chains`` output (all tables of one family)."""
    names: list[str] = []
    current = None
    for line in listing.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "table" and words[3] == "{":
            current = words[2]
        elif current == table and len(words) == 3 and words[0] == "chain" and words[2] == "{":
            names.append(words[1])
    return names
