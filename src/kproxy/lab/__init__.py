"""Real-kernel labs: network namespaces as nodes, pods and clients, with real traffic."""
