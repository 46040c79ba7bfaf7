"""evagg.plugin: the mosaik layer."""
