"""``kproxy doctor``: why a Service is (not) reachable, answered with evidence from the node and the objects.

``findings`` holds what a check reports, ``target`` resolves what the user named, ``checks`` works
through the objects, rules, conntrack and sysctls, ``paths`` sends packets down the one packet path
(``kproxy.netfilter.path``), ``report`` prints text and JSON and ``html`` writes one offline page.
"""
