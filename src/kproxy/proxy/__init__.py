"""kube-proxy: configuration, change tracking, proxiers and the sync loop."""
