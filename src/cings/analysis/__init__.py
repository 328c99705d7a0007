"""Studies of what a (cings-trained) model does, one module per study, each handed its model (or a way
to get predictions) by the caller: ``attention`` measures how much of the answer's attention lands on
the passage, layer by layer.

Import the module you need (``from cings.analysis.attention import measure``); nothing is re-exported.
Only the command line and the demo import this folder.
"""
