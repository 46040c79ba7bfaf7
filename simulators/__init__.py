"""evagg.simulators: the models, free of mosaik (fleet, reference signals, dispatch engine)."""
