"""`eagle-recipes tune`: the recipe's levers chosen by measurement on its own data (Ray Tune trials, ASHA).

tuner.py runs it (features, trials, outputs), trial.py is what one trial does, results.py what a tune leaves:
the table, the plot and best.toml; display.py shows it.
"""
