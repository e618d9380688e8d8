"""``python -m kproxy``: the kproxy command (how lab processes start it inside namespaces)."""

from kproxy.cli.main import main

main()
