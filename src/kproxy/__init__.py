"""kproxy: the Linux service-routing stack (netfilter, conntrack, NAT, nftables, ipset, IPVS) in Python."""

__version__ = "0.1.0"
