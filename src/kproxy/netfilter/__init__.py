"""The netfilter engine: hooks, priorities, conntrack, NAT and trace events."""
