"""iptables-save output compared across two saves: its comment lines carry the time of the save."""


def rules_of(save: str) -> str:
    """The save without its ``# Generated``/``# Completed`` lines, which differ a second later."""
    return "".join(ln for ln in save.splitlines(True) if not ln.startswith("#"))
