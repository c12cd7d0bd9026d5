"""Built-in arenas, installed as package data so `pip install .` finds them too."""
