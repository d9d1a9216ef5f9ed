"""After the run: every checkpoint of it scored on the same held-out samples (heldout.py), placed on the
tokens-consumed axis (trajectory.py), written as a table (table.py) and a plot (plot.py)."""
