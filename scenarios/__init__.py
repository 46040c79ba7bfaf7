"""evagg.scenarios: runnable mosaik scenarios and the `evagg` command."""
