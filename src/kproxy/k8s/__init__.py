"""Kubernetes objects and where they come from (manifest files; the API)."""
