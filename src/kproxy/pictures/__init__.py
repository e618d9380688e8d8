"""Pictures drawn with graphviz: chain hierarchies (``chains``) and one packet's path (``tracepic``).

Each builds a ``graphviz.Digraph``; ``render`` turns it into DOT text or SVG (Graphviz's ``dot``).
"""
