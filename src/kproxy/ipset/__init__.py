"""IP sets: the set types, the per-node registry and the ipset command."""
