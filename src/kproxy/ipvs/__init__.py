"""IPVS: virtual services, schedulers, the connection table and the ipvsadm command."""
